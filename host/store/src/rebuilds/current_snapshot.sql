-- The transaction's snapshot as text (pg_snapshot), which catch-up and the switch compare event
-- writers against (operator::done_after_snapshot, operator::supersede_in_snapshot).
SELECT pg_current_snapshot()::text
