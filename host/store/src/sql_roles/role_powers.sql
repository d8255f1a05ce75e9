-- What role $1 may do beyond its grants: (TEMPORARY on this database, CREATE on this database,
-- SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS, the roles it is a member of).
SELECT has_database_privilege(r.oid, current_database(), 'TEMPORARY'),
       has_database_privilege(r.oid, current_database(), 'CREATE'),
       r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid)
FROM pg_roles r WHERE r.rolname = $1
