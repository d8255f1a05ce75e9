-- Per projection with unfinished events (projection $1, or every one when $1 is NULL):
-- (projection, stuck = processing under an expired lease, seconds since the oldest pending row
-- was created or NULL when none is pending).
SELECT projection,
       count(*) FILTER (WHERE status = 'processing' AND lease_expires_at < now()),
       EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8
FROM outbox_events
WHERE status IN ('pending', 'processing') AND ($1::text IS NULL OR projection = $1)
GROUP BY projection
