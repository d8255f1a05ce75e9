-- Whether sqlx's migration table exists on the search path (it does once any migration ran).
SELECT to_regclass('_sqlx_migrations') IS NOT NULL
