-- The table the configured name $1 (quoted, as quote_table makes it) resolves to on the search
-- path, as `schema.table`; no row when there is none.
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
