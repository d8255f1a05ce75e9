-- Appends the audit row of one replay or skip (dry runs too).
--   $1: 'replay' | 'skip'    $2: projection    $3: who    $4: why    $5: the filter (jsonb)
--   $6: dry run    $7: how many events    $8: their ids (uuid[])
INSERT INTO replay_audit (action, projection, performed_by, reason, filter, dry_run, row_count, event_ids)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
