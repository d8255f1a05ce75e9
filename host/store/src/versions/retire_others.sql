-- Retires the active version of projection $1 unless it is the one with digest $2. Run before
-- record_active.sql in the same transaction, not in one WITH with it: the partial unique index
-- allows one active row, and the statements of one WITH run in no defined order.
UPDATE plugin_versions SET status = 'retired'
WHERE projection = $1 AND status = 'active' AND digest <> $2
