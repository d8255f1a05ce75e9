-- The pause of projection $1 (or of every paused projection when $1 is NULL):
-- (projection, paused_by, paused_at, reason).
SELECT projection, paused_by, paused_at, reason FROM projection_pauses
WHERE $1::text IS NULL OR projection = $1
