-- The numbers behind the outbox gauges of each projection in $1 (text[]) that has unfinished
-- events (rows of Gauges): lag (pending or processing), in flight (processing under a live
-- lease), stuck (processing under an expired lease), blocked (pending behind a failed event of
-- its aggregate), and when the oldest unfinished event was created. A projection without
-- unfinished events has no row: all zero. status.rs stores the reading for every host
-- (status_gauges_store.sql).
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
SELECT u.projection, u.lag, u.inflight, u.stuck, COALESCE(b.blocked, 0) AS blocked,
       u.oldest_created_at
FROM unfinished u
LEFT JOIN blocked b ON b.projection = u.projection
