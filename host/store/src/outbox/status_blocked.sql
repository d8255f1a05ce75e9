-- Pending rows behind a failed row of their aggregate, per projection (projection $1, or every
-- one when $1 is NULL): (projection, count). Counted from the aggregates that have a failed row.
WITH first_failure AS (
    SELECT projection, aggregate_id, min(seq) AS seq
    FROM outbox_events
    WHERE status = 'failed' AND ($1::text IS NULL OR projection = $1)
    GROUP BY projection, aggregate_id
)
SELECT f.projection, count(*)
FROM first_failure f
JOIN outbox_events o ON o.projection = f.projection AND o.aggregate_id = f.aggregate_id
                    AND o.seq > f.seq AND o.status = 'pending'
GROUP BY f.projection
