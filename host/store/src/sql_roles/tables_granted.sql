-- The tables role $1 holds any privilege on, as `schema.table`, sorted.
SELECT DISTINCT table_schema || '.' || table_name FROM information_schema.role_table_grants
WHERE grantee = $1 ORDER BY 1
