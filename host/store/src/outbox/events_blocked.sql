-- The blocked events of projection $1: pending behind a failed event of their aggregate, oldest
-- first (rows of EventSummary; blocked_by is the seq of the aggregate's first failed event).
-- Found from the (few) aggregates that have a failed event, as status_blocked.sql counts them.
--   $2: only those whose blocking event failed with this error_reason (NULL: any)
--   $3: only this event_type (NULL: any)    $4: only seq above this (0: from the start)
--   $5: at most this many    $6: how many characters of the error and of the payload text
WITH first_failure AS (
    SELECT DISTINCT ON (aggregate_id) aggregate_id, seq, error_reason
    FROM outbox_events
    WHERE projection = $1 AND status = 'failed'
    ORDER BY aggregate_id, seq
)
SELECT o.seq, o.id, o.event_type, o.aggregate_type, o.aggregate_id, o.status, o.attempts,
       o.error_reason, o.failure_kind, left(o.error, $6) AS error_excerpt,
       left(o.payload::text, $6) AS payload_excerpt, o.created_at, o.replay_count,
       o.projection_version, f.seq AS blocked_by
FROM first_failure f
JOIN outbox_events o ON o.projection = $1 AND o.aggregate_id = f.aggregate_id
                    AND o.seq > f.seq AND o.status = 'pending'
WHERE ($2::text IS NULL OR f.error_reason = $2)
  AND ($3::text IS NULL OR o.event_type = $3)
  AND o.seq > $4
ORDER BY o.seq
LIMIT $5
