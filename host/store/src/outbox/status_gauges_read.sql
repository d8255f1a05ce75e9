-- The stored gauge readings of projections $1 (text[]), with the age of the oldest unfinished
-- event as of now. A projection never read yet has no row.
SELECT projection, lag, inflight, stuck, blocked,
       COALESCE(EXTRACT(EPOCH FROM now() - oldest_created_at), 0)::float8 AS oldest_age_seconds
FROM outbox_gauges
WHERE projection = ANY($1)
