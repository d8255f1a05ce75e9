-- Puts schema $1 (quoted) first on this transaction's search_path, so a plugin's unqualified
-- table names reach the shadow copies there.
SELECT set_config('search_path', $1 || ', ' || current_setting('search_path'), true)
