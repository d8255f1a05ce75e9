-- The 100 latest replay_audit rows of projection $1 (replays and skips, dry runs included),
-- newest first (rows of AuditEntry).
SELECT id, action, performed_by, performed_at, reason, filter, dry_run, row_count, event_ids
FROM replay_audit WHERE projection = $1 ORDER BY id DESC LIMIT 100
