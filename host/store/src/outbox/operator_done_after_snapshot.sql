-- The events of projection $1 a zero-downtime rebuild must still apply to its new model: `done`
-- (so applied to the old model) but written after the rebuild's snapshot $2 (pg_snapshot as
-- text; so not in the source rows it read), minus those it already applied ($3: their seqs,
-- bigint[]). Oldest first, as claim.rs's Row.
SELECT seq, id, event_type, aggregate_type, aggregate_id, payload::text, headers, occurred_at,
       attempts, false
FROM outbox_events
WHERE projection = $1 AND status = 'done'
  AND created_xid IS NOT NULL AND NOT pg_visible_in_snapshot(created_xid, $2::text::pg_snapshot)
  AND seq <> ALL($3)
ORDER BY seq
