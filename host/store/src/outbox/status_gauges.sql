-- Reads the numbers behind the outbox gauges of each projection in $1 (text[]) and stores them
-- in its row of outbox_gauges (migration 0012; status_gauges_due.sql made the row): lag
-- (pending or processing), in flight (processing under a live lease), stuck (processing under an
-- expired lease), blocked (pending behind a failed event of its aggregate), and when the oldest
-- unfinished event was created. A projection without
-- unfinished events is stored as zeros and no creation time.
-- Blocked rows are counted from the (few) aggregates that have a failed row, not by probing
-- every pending row: the refresh stays cheap with a large backlog.
WITH unfinished AS (
    SELECT o.projection,
           count(*) AS lag,
           count(*) FILTER (WHERE o.status = 'processing' AND o.lease_expires_at >= now()) AS inflight,
           count(*) FILTER (WHERE o.status = 'processing' AND o.lease_expires_at < now()) AS stuck,
           min(o.created_at) AS oldest_created_at
    FROM outbox_events o
    WHERE o.projection = ANY($1) AND o.status IN ('pending', 'processing')
    GROUP BY o.projection
),
first_failure AS (
    SELECT projection, aggregate_id, min(seq) AS seq
    FROM outbox_events
    WHERE projection = ANY($1) AND status = 'failed'
    GROUP BY projection, aggregate_id
),
blocked AS (
    SELECT f.projection, count(*) AS blocked
    FROM first_failure f
    JOIN outbox_events o ON o.projection = f.projection AND o.aggregate_id = f.aggregate_id
                        AND o.seq > f.seq AND o.status = 'pending'
    GROUP BY f.projection
)
UPDATE outbox_gauges g
SET lag = COALESCE(u.lag, 0), inflight = COALESCE(u.inflight, 0), stuck = COALESCE(u.stuck, 0),
    blocked = COALESCE(b.blocked, 0), oldest_created_at = u.oldest_created_at
FROM unnest($1::text[]) AS p(projection)
LEFT JOIN unfinished u ON u.projection = p.projection
LEFT JOIN blocked b ON b.projection = p.projection
WHERE g.projection = p.projection
