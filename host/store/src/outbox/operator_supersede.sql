-- The rebuild transition (pending/processing -> done) of projection $1: every unfinished event
-- written in the snapshot $2 (pg_snapshot as text) a zero-downtime rebuild built its model from
-- is already in that model. Stamped with $3 as projection_version. Runs in the switch's
-- transaction, while the projection is paused and nothing of it is in flight; a batch claimed
-- anyway is fenced off (its settle finds the row no longer `processing`), and the in-flight
-- marks its claim left on its heads (migration 0013) are cleared, so the aggregates' later
-- events do not wait for that batch's lease to end.
WITH shown AS (
    UPDATE outbox_heads
    SET claimed_until = '-infinity'
    WHERE projection = $1 AND claimed_until > now()
)
UPDATE outbox_events
SET status = 'done', done_at = now(), projection_version = $3,
    claim_batch_id = NULL, lease_expires_at = NULL, error_reason = NULL, error = NULL
WHERE projection = $1 AND status IN ('pending', 'processing')
  AND (created_xid IS NULL OR pg_visible_in_snapshot(created_xid, $2::text::pg_snapshot))
