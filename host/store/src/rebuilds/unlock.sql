-- Releases the rebuild lock of projection $1 that try_lock.sql took on this session.
SELECT pg_advisory_unlock(hashtext('projector_rebuild:' || $1))
