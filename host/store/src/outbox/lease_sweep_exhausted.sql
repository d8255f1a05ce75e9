-- Fails ('lease_expired', attempts exhausted) the rows of projection $1 stuck under an expired
-- lease after their last allowed attempt ($2: max attempts); returns their seqs.
UPDATE outbox_events
SET status = 'failed', failure_kind = 'attempts_exhausted', error_reason = 'lease_expired',
    error = format('lease expired during attempt %s of %s (claimed by %s)', attempts, $2::int, claimed_by),
    lease_expires_at = NULL
WHERE projection = $1 AND status = 'processing' AND lease_expires_at < now() AND attempts >= $2
RETURNING seq
