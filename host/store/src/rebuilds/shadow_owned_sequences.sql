-- The sequences owned by columns of table $1 (oid), as `serial` makes them:
-- (sequence schema, sequence, column).
SELECT n.nspname::text, s.relname::text, a.attname::text
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace n ON n.oid = s.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.refobjid = $1::oid AND d.deptype = 'a'
