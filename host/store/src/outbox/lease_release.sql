-- Gives back the rows worker $1 holds (all of them, or only those of claim $2 when it is not
-- NULL) and returns each row's projection. Released rows go back to due-now `pending` and their
-- attempt is given back: the plugin's answer never reached the database, so it does not count.
UPDATE outbox_events
SET status = 'pending', claim_batch_id = NULL, lease_expires_at = NULL, next_retry_at = now(),
    attempts = GREATEST(attempts - 1, 0)
WHERE claimed_by = $1 AND status = 'processing' AND ($2::uuid IS NULL OR claim_batch_id = $2)
RETURNING projection
