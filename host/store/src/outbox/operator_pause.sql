-- Pauses projection $1 on behalf of $2 for the reason $3 (NULL: none given). Idempotent: an
-- existing pause, whoever made it, stays as it is.
INSERT INTO projection_pauses (projection, paused_by, reason) VALUES ($1, $2, $3)
ON CONFLICT (projection) DO NOTHING
