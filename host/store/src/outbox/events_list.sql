-- The events of projection $1 in status $2 ('pending', 'processing', 'done', 'failed' or
-- 'skipped'), oldest first, one page of an operator's listing (rows of EventSummary, with
-- blocked_by NULL).
--   $3: only this error_reason (NULL: any)    $4: only this event_type (NULL: any)
--   $5: only seq above this (0: from the start)    $6: at most this many
--   $7: how many characters of the error and of the payload text to return
SELECT seq, id, event_type, aggregate_type, aggregate_id, status, attempts, error_reason,
       failure_kind, left(error, $7) AS error_excerpt, left(payload::text, $7) AS payload_excerpt,
       created_at, replay_count, projection_version, NULL::bigint AS blocked_by
FROM outbox_events
WHERE projection = $1 AND status = $2
  AND ($3::text IS NULL OR error_reason = $3)
  AND ($4::text IS NULL OR event_type = $4)
  AND seq > $5
ORDER BY seq
LIMIT $6
