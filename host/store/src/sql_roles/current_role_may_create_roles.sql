-- The current user and whether it may create roles (SUPERUSER or CREATEROLE).
SELECT rolname::text, rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user
