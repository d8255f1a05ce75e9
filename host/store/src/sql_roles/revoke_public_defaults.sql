-- Takes from PUBLIC what a projection role must not have: TEMPORARY on this database (the host's
-- own role keeps it, granted by name) and CREATE on the `public` schema. Two statements, no
-- parameters (run as a script).
DO $revoke$ BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), current_user);
END $revoke$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
