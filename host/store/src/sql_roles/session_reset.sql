-- What a projection role's connection is reset with when it goes back to its pool: session
-- advisory locks, LISTENs, settings, cursors and temporary objects a plugin left. Several
-- statements, no parameters (run as a script).
SELECT pg_advisory_unlock_all(); UNLISTEN *; RESET ALL; CLOSE ALL; DISCARD TEMP
