-- The failed events of projection $1 an operator's filter selects, oldest first, locked for the
-- replay or skip that follows in the same transaction.
--   $2: only this error_reason (NULL: any)    $3: only this event_type (NULL: any)
--   $4: only these ids (uuid[], NULL: any)    $5: at most this many
SELECT id FROM outbox_events
WHERE projection = $1 AND status = 'failed'
  AND ($2::text IS NULL OR error_reason = $2)
  AND ($3::text IS NULL OR event_type = $3)
  AND ($4::uuid[] IS NULL OR id = ANY($4))
ORDER BY seq
LIMIT $5
FOR UPDATE
