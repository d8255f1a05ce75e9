-- The running canary of projection $1, or no row (rows of RunningCanary). The component is
-- read apart (canary_component.sql), only by a host that loads it: this one is read every
-- tick of a canary's decision watch.
SELECT c.id, c.share_percent, c.min_events, c.margin_percent, c.started_at, c.started_by,
       v.digest, v.version_label,
       c.baseline_events, c.baseline_transient, c.baseline_terminal,
       c.canary_events, c.canary_transient, c.canary_terminal
FROM plugin_canaries c JOIN plugin_versions v ON v.id = c.canary_id
WHERE c.projection = $1 AND c.state = 'running'
