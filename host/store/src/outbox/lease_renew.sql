-- Extends by $2 seconds (float8) the lease of every row claim $1 still holds (fenced: rows no
-- longer processing under this claim are left alone).
UPDATE outbox_events
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE claim_batch_id = $1 AND status = 'processing'
