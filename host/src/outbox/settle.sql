-- Record the outcomes of claim $1, all in this one statement (one transaction).
--   $2..$6: per event: seq, verdict ('success' | 'transient' | 'deterministic'), reason,
--           message, retry delay in seconds (used for transient verdicts with attempts left)
--   $7: max attempts    $8: the plugin version that produced the outcomes
-- Fenced: rows no longer held by this claim (reclaimed, released) are left alone and not returned.
WITH outcome AS (
    SELECT *
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::float8[])
         AS u(seq, verdict, reason, message, retry_delay)
),
decided AS (
    SELECT o.*,
           CASE
               WHEN o.verdict = 'success' THEN 'done'
               WHEN o.verdict = 'transient' AND e.attempts < $7 THEN 'pending'
               ELSE 'failed'
           END AS next_status
    FROM outcome o
    JOIN outbox_events e ON e.seq = o.seq
    WHERE e.claim_batch_id = $1 AND e.status = 'processing'
)
UPDATE outbox_events e
SET status = d.next_status,
    done_at = CASE WHEN d.next_status = 'done' THEN clock_timestamp() END,
    next_retry_at = CASE WHEN d.next_status = 'pending'
                         THEN now() + make_interval(secs => d.retry_delay)
                         ELSE e.next_retry_at END,
    lease_expires_at = NULL,
    error_reason = CASE WHEN d.next_status = 'done' THEN NULL ELSE d.reason END,
    error = CASE WHEN d.next_status = 'done' THEN NULL ELSE d.message END,
    failure_kind = CASE
                       WHEN d.next_status <> 'failed' THEN NULL
                       WHEN d.verdict = 'deterministic' THEN 'deterministic'
                       ELSE 'attempts_exhausted'
                   END,
    projection_version = $8
FROM decided d
WHERE e.seq = d.seq AND e.claim_batch_id = $1 AND e.status = 'processing'
RETURNING e.seq, e.status, e.attempts, d.verdict, d.retry_delay
