-- Removes the pause of projection $1, only if it was made by $2 when $2 is not NULL (a rebuild
-- lifts its own pause and leaves an operator's).
DELETE FROM projection_pauses
WHERE projection = $1 AND ($2::text IS NULL OR paused_by = $2)
