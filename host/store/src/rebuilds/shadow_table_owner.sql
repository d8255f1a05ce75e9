-- The owner of table $1 (oid), as a role name ready for ALTER TABLE ... OWNER TO.
SELECT relowner::regrole::text FROM pg_class WHERE oid = $1::oid
