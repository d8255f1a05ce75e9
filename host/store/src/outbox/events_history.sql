-- The replay_audit rows of projection $1 that name the event $2 (uuid): its replays and skips,
-- dry runs included, newest first, at most 50 (rows of AuditEntry). Uses the GIN index on
-- event_ids (migration 0010).
SELECT id, action, performed_by, performed_at, reason, filter, dry_run, row_count, event_ids
FROM replay_audit
WHERE projection = $1 AND event_ids @> ARRAY[$2::uuid]
ORDER BY id DESC
LIMIT 50
