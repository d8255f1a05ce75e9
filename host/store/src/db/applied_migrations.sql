-- The versions of the migrations recorded as applied successfully, in order.
SELECT version FROM _sqlx_migrations WHERE success ORDER BY version
