-- Starts a canary of projection $1: version id $3 beside the active version id $2, for $4
-- percent of aggregates, decided after $5 canary outcomes with a margin of $6 percentage
-- points; $7 is who started it. Returns the canary's id.
INSERT INTO plugin_canaries (projection, baseline_id, canary_id, share_percent, min_events,
                             margin_percent, started_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id
