-- Retires the canary version of projection $1, if any, unless it is the one with digest $2 (a
-- promotion makes it active instead), recording why ($3) in its `reason`.
UPDATE plugin_versions SET status = 'retired', reason = $3
WHERE projection = $1 AND status = 'canary' AND digest <> $2
