-- Replay (failed -> pending): the events $1 (uuid[]) still failed become due now with their
-- attempts reset, stamped as replayed by $2 for the reason $3.
UPDATE outbox_events
SET status = 'pending', attempts = 0, next_retry_at = now(), failure_kind = NULL,
    replay_count = replay_count + 1, last_replayed_at = now(), last_replayed_by = $2,
    last_replayed_reason = $3
WHERE id = ANY($1) AND status = 'failed'
