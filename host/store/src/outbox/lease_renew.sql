-- Extends by $2 seconds (float8) the lease of the rows $3 (seqs, bigint[]) that claim $1 still
-- holds (fenced: rows no longer processing under this claim are left alone). The rows are found
-- by seq; the claim's token only fences (there is no index on it, migration 0008).
UPDATE outbox_events
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE seq = ANY($3) AND (CASE WHEN status = 'processing' THEN claim_batch_id END) = $1
