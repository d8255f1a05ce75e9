-- The latest finished rebuild of each projection in $1 (text[]), for the projector_rebuild_*
-- gauges (rebuilds may run in another process: `projector rebuild` records them here): its
-- duration in seconds, when it finished (seconds since the epoch), and whether it succeeded.
SELECT DISTINCT ON (projection) projection,
       EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS duration_seconds,
       EXTRACT(EPOCH FROM finished_at)::float8 AS finished_at_seconds,
       status = 'succeeded' AS succeeded
FROM projector_rebuilds
WHERE finished_at IS NOT NULL AND projection = ANY($1)
ORDER BY projection, finished_at DESC
