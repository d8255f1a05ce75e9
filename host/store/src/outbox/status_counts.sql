-- Rows per projection and status: (projection, status, count), for projection $1 or, when $1 is
-- NULL, every projection.
SELECT projection, status, count(*) FROM outbox_events
WHERE $1::text IS NULL OR projection = $1
GROUP BY projection, status
