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
-- Heads (migration 0007): for each aggregate with events made `done` here, the earliest event
-- of it still unfinished once this commits (ours are still `processing` in this statement's
-- snapshot, so they are left out by seq) becomes its head's `next_seq`, or, with none, the head
-- is removed. Both only for heads locked here without waiting and whose `version` is still the
-- one the snapshot saw: an insert that raced this settle bumped it or holds the row, and the
-- head stays as it was (still a lower bound; the reclaim sweep removes it if it ends up empty).
--
-- Plan: the outcomes drive the join and each finds its row through the primary key, in the
-- custom and the generic plan alike. The fence is written as a CASE so that it is a filter on
-- the row found, never an index condition (the index on claim_batch_id, dropped in migration
-- 0008): with it as one, the
-- generic plan (Postgres switches to it after five executions) started from the claim's rows
-- and compared every pair, 250,000 comparisons for a batch of 500 (tests/claim_cost.rs).
WITH settled AS (
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
WHERE e.seq = u.seq AND (CASE WHEN e.status = 'processing' THEN e.claim_batch_id END) = $1
RETURNING e.seq, e.status, e.attempts, u.verdict, u.retry_delay, e.projection, e.aggregate_id
),
finished AS (
    SELECT s.projection, s.aggregate_id, array_agg(s.seq) AS seqs
    FROM settled s
    WHERE s.status = 'done'
    GROUP BY s.projection, s.aggregate_id
),
seen AS (
    SELECT f.projection, f.aggregate_id, h.version, h.next_seq, h.head_tid,
           (SELECT o.seq
            FROM outbox_events o
            WHERE o.projection = f.projection AND o.aggregate_id = f.aggregate_id
              AND o.seq >= h.next_seq AND o.status <> 'done' AND o.status <> 'skipped'
              AND o.seq <> ALL (f.seqs)
            ORDER BY o.seq
            LIMIT 1) AS next_unfinished
    FROM finished f
    CROSS JOIN LATERAL (
        SELECT h.version, h.next_seq, h.ctid AS head_tid
        FROM outbox_heads h
        WHERE h.projection = f.projection AND h.aggregate_id = f.aggregate_id
        OFFSET 0
    ) h
),
-- The heads this settle may change: locked without waiting, by the tid `seen` read them at (a
-- head updated since fails the version check, as before), then deleted or moved by the tid
-- locked here. A head another transaction holds is an application's insert under way (or
-- another host's sweep); it is left as it is, which is always safe (a head is a lower bound),
-- and the settle never waits on the application.
current AS (
    SELECT s.*, l.tid
    FROM (SELECT * FROM seen ORDER BY projection, aggregate_id) s
    CROSS JOIN LATERAL (
        SELECT h.version, h.ctid AS tid
        FROM outbox_heads h
        WHERE h.ctid = s.head_tid
        FOR UPDATE SKIP LOCKED
    ) l
    WHERE l.version = s.version
),
gone AS (
    DELETE FROM outbox_heads h
    USING current s
    WHERE h.ctid = s.tid AND s.next_unfinished IS NULL
),
-- A head that stays is shown to the claim's walk again (`claimed_until`, migration 0013): its
-- run is no longer in flight. The events of it this settle did not finish leave `processing`
-- too, and the status trigger shows the heads of aggregates with none finished.
moved AS (
    UPDATE outbox_heads h
    SET next_seq = greatest(h.next_seq, s.next_unfinished),
        claimed_until = '-infinity'
    FROM current s
    WHERE h.ctid = s.tid AND s.next_unfinished IS NOT NULL
)
SELECT seq, status, attempts, verdict, retry_delay FROM settled
