-- The privileges granted on table $1 (oid) to roles other than its owner:
-- (grantee, ready for GRANT ... TO; privilege; with grant option).
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
       a.privilege_type, a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = $1::oid AND a.grantee <> c.relowner
