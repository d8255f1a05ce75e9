-- Failed rows per projection and error_reason ('' when none was recorded), for projection $1 or,
-- when $1 is NULL, every projection: (projection, reason, count).
SELECT projection, COALESCE(error_reason, ''), count(*) FROM outbox_events
WHERE status = 'failed' AND ($1::text IS NULL OR projection = $1)
GROUP BY projection, error_reason
