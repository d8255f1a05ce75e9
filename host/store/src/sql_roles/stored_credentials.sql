-- Projection $1's stored role and password, when that role exists: (role, password).
SELECT s.role::text, s.password FROM projector_sql_roles s
JOIN pg_roles r ON r.rolname = s.role WHERE s.projection = $1
