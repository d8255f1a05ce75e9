-- Claim without ordering (`ordering = "none"`): up to $2 due events of projection $1 for worker
-- $3 under the fencing token $4, oldest first, any number per aggregate.
--   $5: unused here (the ordered claim's events per aggregate)
--   $6: max attempts (stuck rows that used them up are left to the reclaim sweep)
--   $7: lease in seconds
--   $8: max payload bytes    $9: max headers bytes    $10: max bytes of event type, aggregate
--       type and aggregate id
--   $11: max payload bytes of the whole batch
-- A field over its bound comes back NULL (with its size), so an oversized event never reaches
-- the host's memory: the host fails it without reading it (see plugin/admission.rs). The batch
-- ends before the event that would take its payloads over $11 (one that comes back NULL counts
-- nothing), but always carries its first event. The events locked past that end stay
-- `pending`, and their locks go when the claim's transaction ends.
-- Claimable: pending and due, or processing with an expired lease (stuck: reclaimed here). A
-- paused projection claims nothing.
WITH candidates AS (
    SELECT o.seq, o.ctid AS tid, o.status AS previous_status, o.payload::text AS payload_text
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
),
-- Each chosen row carries what the UPDATE and its RETURNING need, so the UPDATE joins no other
-- CTE (see claim_ordered.sql: such a join, planned as a nested loop, compares every pair).
chosen AS (
    SELECT y.seq, y.tid, y.previous_status, y.payload_text
    FROM (
        SELECT x.*, sum(x.bytes) OVER (ORDER BY x.seq ROWS UNBOUNDED PRECEDING) AS total
        FROM (
            SELECT c.*, CASE WHEN octet_length(c.payload_text) <= $8
                             THEN octet_length(c.payload_text) ELSE 0 END AS bytes
            FROM candidates c
        ) x
    ) y
    WHERE y.total <= $11 OR y.total = y.bytes
)
UPDATE outbox_events e
SET status = 'processing',
    claimed_by = $3,
    claim_batch_id = $4,
    lease_expires_at = now() + make_interval(secs => $7),
    processing_started_at = now(),
    attempts = e.attempts + 1
FROM chosen c
WHERE e.ctid = c.tid
-- (RETURNING: claim_returning.sql, appended by claim.rs)
