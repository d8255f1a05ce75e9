-- Notifies channel $1 with payload $2 (a projection's name), delivered when the surrounding
-- transaction commits.
SELECT pg_notify($1, $2)
