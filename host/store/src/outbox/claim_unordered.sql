-- Claim without ordering (`ordering = "none"`): up to $2 due events of projection $1 for worker
-- $3 under the fencing token $4, oldest first, any number per aggregate.
--   $5: unused here (the ordered claim's events per aggregate)
--   $6: max attempts (stuck rows that used them up are left to the reclaim sweep)
--   $7: lease in seconds
--   $8: max payload bytes    $9: max headers bytes    $10: max bytes of event type, aggregate
--       type and aggregate id
-- A field over its bound comes back NULL (with its size), so an oversized event never reaches
-- the host's memory: the host fails it without reading it (see plugin/admission.rs).
-- Claimable: pending and due, or processing with an expired lease (stuck: reclaimed here). A
-- paused projection claims nothing.
WITH candidates AS (
    SELECT o.seq, o.status AS previous_status, o.payload::text AS payload_text
    FROM outbox_events o
    WHERE o.projection = $1
      AND NOT EXISTS (SELECT 1 FROM projection_pauses pp WHERE pp.projection = $1)
      AND o.status IN ('pending', 'processing')
      AND (   (o.status = 'pending' AND o.next_retry_at <= now())
           OR (o.status = 'processing' AND o.lease_expires_at < now() AND o.attempts < $6))
    -- seq + 0: only outbox_events_claimable provides this order (see migration 0005).
    ORDER BY o.seq + 0
    LIMIT $2
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox_events e
SET status = 'processing',
    claimed_by = $3,
    claim_batch_id = $4,
    lease_expires_at = now() + make_interval(secs => $7),
    processing_started_at = now(),
    attempts = e.attempts + 1
FROM candidates c
WHERE e.seq = c.seq
-- (RETURNING: claim_returning.sql, appended by claim.rs)
