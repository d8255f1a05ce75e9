-- The password stored for projection $1's role, if any.
SELECT password FROM projector_sql_roles WHERE projection = $1
