-- The database this session is connected to (role names carry a digest of it).
SELECT current_database()::text
