-- The canaries of projection $1 (of every projection when $1 is NULL), latest first, at most 20
-- per projection, with their versions' labels (rows of CanaryRow).
SELECT c.id, c.projection, b.version_label AS baseline_version, v.version_label AS canary_version,
       c.share_percent, c.min_events, c.margin_percent, c.state, c.started_at, c.started_by,
       c.decided_at, c.decided_by, c.reason,
       c.baseline_events, c.baseline_transient, c.baseline_terminal,
       c.canary_events, c.canary_transient, c.canary_terminal
FROM (SELECT *, row_number() OVER (PARTITION BY projection ORDER BY id DESC) AS nth
      FROM plugin_canaries WHERE $1::text IS NULL OR projection = $1) c
JOIN plugin_versions b ON b.id = c.baseline_id
JOIN plugin_versions v ON v.id = c.canary_id
WHERE c.nth <= 20
ORDER BY c.projection, c.id DESC
