-- What is attached to table $1 (oid) that moving it would leave attached to the old table, one
-- row per object, worded to follow "table X ...": dependent views, foreign keys pointing at it,
-- user triggers on it.
SELECT 'has the dependent view ' || v.oid::regclass::text
FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
WHERE d.refobjid = $1::oid AND v.oid <> $1::oid
UNION
SELECT 'is referenced by the foreign key ' || conname || ' of ' || conrelid::regclass::text
FROM pg_constraint WHERE confrelid = $1::oid AND contype = 'f'
UNION
SELECT 'has the trigger ' || tgname FROM pg_trigger WHERE tgrelid = $1::oid AND NOT tgisinternal
