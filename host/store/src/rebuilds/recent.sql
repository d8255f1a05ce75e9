-- The 20 latest rebuilds of projection $1, newest first (rows of RebuildRecord).
SELECT id, mode, source, truncate, started_by, started_at, finished_at, status, rows_read,
       rows_applied, rows_failed, caught_up, error
FROM projector_rebuilds WHERE projection = $1 ORDER BY id DESC LIMIT 20
