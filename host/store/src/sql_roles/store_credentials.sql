-- Stores (or replaces) projection $1's role $2 and its password $3.
INSERT INTO projector_sql_roles (projection, role, password) VALUES ($1, $2, $3)
ON CONFLICT (projection) DO UPDATE SET role = EXCLUDED.role, password = EXCLUDED.password
