-- The version of projection $1 with digest $2, if a host was ever given it: (status, when it
-- was first given to a host).
SELECT status, loaded_at FROM plugin_versions WHERE projection = $1 AND digest = $2
