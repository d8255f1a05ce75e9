-- Serialises, until the end of the transaction, the recording of versions of projection $1
-- across hosts (hosts starting together record the same version at once, and both inserts would
-- race on the one-active index).
SELECT pg_advisory_xact_lock(hashtext('projector_plugin_versions:' || $1))
