-- Record the outcomes of claim $1, all in this one statement (one transaction).
--   $2..$6: per event: seq, verdict ('success' | 'transient' | 'deterministic' | 'deferred'),
--           reason, message, retry delay in seconds (used for transient verdicts with attempts
--           left)
--   $7: max attempts    $8: the plugin version that produced the outcomes
-- Transitions: success -> done; transient -> pending after the retry delay, or failed
-- ('attempts_exhausted') once the attempts are used up; deterministic -> failed
-- ('deterministic'); deferred (the event followed a non-success of its aggregate in the same
-- run) -> due-now pending with its attempt given back and its error fields untouched.
-- Fenced: rows no longer held by this claim (reclaimed, released) are left alone and not returned.
--
-- Plan: the outcomes drive the join and each finds its row through the primary key, in the
-- custom and the generic plan alike. `(claim_batch_id = $1) IS TRUE` is a filter on the row
-- found, never an index condition: as one, the generic plan (Postgres switches to it after five
-- executions) started from the claim's rows and compared every pair, 250,000 comparisons for a
-- batch of 500.
UPDATE outbox_events e
SET status = CASE
                 WHEN u.verdict = 'success' THEN 'done'
                 WHEN u.verdict = 'deferred' THEN 'pending'
                 WHEN u.verdict = 'transient' AND e.attempts < $7 THEN 'pending'
                 ELSE 'failed'
             END,
    done_at = CASE WHEN u.verdict = 'success' THEN clock_timestamp() END,
    next_retry_at = CASE
                        WHEN u.verdict = 'deferred' THEN now()
                        WHEN u.verdict = 'transient' AND e.attempts < $7
                            THEN now() + make_interval(secs => u.retry_delay)
                        ELSE e.next_retry_at
                    END,
    lease_expires_at = NULL,
    attempts = CASE WHEN u.verdict = 'deferred' THEN greatest(e.attempts - 1, 0) ELSE e.attempts END,
    error_reason = CASE u.verdict WHEN 'success' THEN NULL WHEN 'deferred' THEN e.error_reason
                                  ELSE u.reason END,
    error = CASE u.verdict WHEN 'success' THEN NULL WHEN 'deferred' THEN e.error ELSE u.message END,
    failure_kind = CASE
                       WHEN u.verdict = 'deterministic' THEN 'deterministic'
                       WHEN u.verdict = 'transient' AND e.attempts >= $7 THEN 'attempts_exhausted'
                   END,
    projection_version = CASE WHEN u.verdict = 'deferred' THEN e.projection_version ELSE $8 END
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::float8[])
     AS u(seq, verdict, reason, message, retry_delay)
WHERE e.seq = u.seq AND (e.claim_batch_id = $1) IS TRUE AND e.status = 'processing'
RETURNING e.seq, e.status, e.attempts, u.verdict, u.retry_delay
