-- Adds one settled sub-batch's outcomes to the running canary $1: $2 true for the canary's side,
-- false for the baseline's; $3 outcomes, $4 of them transient (retried), $5 terminal (failed).
-- Returns the canary's outcome count so far, or no row once the canary has ended.
UPDATE plugin_canaries
SET baseline_events    = baseline_events    + CASE WHEN $2 THEN 0 ELSE $3 END,
    baseline_transient = baseline_transient + CASE WHEN $2 THEN 0 ELSE $4 END,
    baseline_terminal  = baseline_terminal  + CASE WHEN $2 THEN 0 ELSE $5 END,
    canary_events      = canary_events      + CASE WHEN $2 THEN $3 ELSE 0 END,
    canary_transient   = canary_transient   + CASE WHEN $2 THEN $4 ELSE 0 END,
    canary_terminal    = canary_terminal    + CASE WHEN $2 THEN $5 ELSE 0 END
WHERE id = $1 AND state = 'running'
RETURNING canary_events
