-- The tables role $1 holds any privilege on, as `schema.table`, leaving out the shadow tables of
-- a zero-downtime rebuild in progress (`projector_rebuild_*` schemas: the rebuild grants and
-- drops those).
SELECT DISTINCT table_schema || '.' || table_name FROM information_schema.role_table_grants
WHERE grantee = $1 AND table_schema NOT LIKE 'projector\_rebuild\_%'
