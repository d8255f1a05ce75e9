-- The tables role $1 holds privileges on, outside rebuild shadow schemas, with how many distinct
-- privileges on each: (`schema.table`, count), sorted.
SELECT table_schema || '.' || table_name, count(DISTINCT privilege_type)
FROM information_schema.role_table_grants
WHERE grantee = $1 AND table_schema NOT LIKE 'projector\_rebuild\_%'
GROUP BY 1 ORDER BY 1
