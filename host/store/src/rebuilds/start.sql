-- Records a rebuild as started and returns its id.
--   $1: projection    $2: mode ('direct' | 'outbox' | 'zero_downtime')    $3: source name
--   $4: whether the granted tables are emptied first    $5: who started it
INSERT INTO projector_rebuilds (projection, mode, source, truncate, started_by)
VALUES ($1, $2, $3, $4, $5) RETURNING id
