-- Deletes up to $2 `done` rows finished more than $1 seconds (float8) ago, oldest first, skipping
-- rows another transaction holds; returns each deleted row's projection.
DELETE FROM outbox_events
WHERE seq IN (
    SELECT seq FROM outbox_events
    WHERE status = 'done' AND done_at < now() - make_interval(secs => $1)
    ORDER BY done_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING projection
