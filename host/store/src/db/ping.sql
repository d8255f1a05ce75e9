-- Whether the server answers (the readiness probe): one row, no table read.
SELECT 1
