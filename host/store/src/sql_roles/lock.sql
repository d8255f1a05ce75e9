-- Serialises provisioning of the roles across hosts until the end of the transaction.
SELECT pg_advisory_xact_lock(hashtext('projector_sql_roles'))
