-- The schemas role $1 may create objects in, sorted.
SELECT nspname::text FROM pg_namespace WHERE has_schema_privilege($1, oid, 'CREATE')
ORDER BY 1
