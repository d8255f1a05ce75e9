-- Records rebuild $1 as finished with status $2 ('succeeded' | 'failed'), its final counts ($3
-- rows read, $4 rows applied, $5 rows failed, $6 events caught up) and error $7 (NULL when it
-- succeeded).
UPDATE projector_rebuilds
SET finished_at = now(), status = $2, rows_read = $3, rows_applied = $4, rows_failed = $5,
    caught_up = $6, error = $7
WHERE id = $1
