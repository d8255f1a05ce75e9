-- The role this session is logged in as (named in "may not migrate" errors).
SELECT current_user::text
