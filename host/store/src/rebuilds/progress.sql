-- Records the counts so far of rebuild $1: $2 rows read, $3 rows applied, $4 rows failed,
-- $5 events caught up.
UPDATE projector_rebuilds SET rows_read = $2, rows_applied = $3, rows_failed = $4, caught_up = $5
WHERE id = $1
