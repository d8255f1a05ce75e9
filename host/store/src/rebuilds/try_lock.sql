-- Takes the one-rebuild-at-a-time lock of projection $1 for this session, without waiting:
-- true when taken, false when another rebuild holds it. Released by unlock.sql (or when the
-- session ends).
SELECT pg_try_advisory_lock(hashtext('projector_rebuild:' || $1))
