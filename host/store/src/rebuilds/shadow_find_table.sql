-- The table the configured name $1 (quoted, as quote_table makes it) resolves to on the search
-- path: (oid, schema, name), or no row.
SELECT c.oid::bigint, n.nspname::text, c.relname::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
