-- Ends the running canary of projection $1, if any, in state $2 ('promoted', 'rolled_back' or
-- 'aborted'), decided by $3 for reason $4. Returns the canary's id, or no row.
UPDATE plugin_canaries
SET state = $2, decided_at = now(), decided_by = $3, reason = $4
WHERE projection = $1 AND state = 'running'
RETURNING id
