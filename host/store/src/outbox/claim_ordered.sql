-- Claim with per-aggregate ordering: up to $2 events of projection $1 for worker $3 under the
-- fencing token $4, at most $5 consecutive events of one aggregate (a "run"; 1 = at most one
-- event per aggregate per batch, the guarantee of contract projector:plugin@0.1.0).
--   $6: max attempts (stuck rows that used them up are left to the reclaim sweep)
--   $7: lease in seconds
--   $8: max payload bytes    $9: max headers bytes    $10: max bytes of event type, aggregate
--       type and aggregate id
--   $11: max payload bytes of the whole batch
-- A field over its bound comes back NULL (with its size), so an oversized event never reaches
-- the host's memory (see claim.rs). The batch ends before the event that would take its
-- payloads over $11 (one that comes back NULL counts nothing), but always carries its first
-- event: a batch holds at most max($11, $8) payload bytes, whatever $2 is.
--
-- Claimable: pending and due, or processing with an expired lease (stuck: reclaimed here). An
-- event is taken only when it is its aggregate's earliest unfinished event (skipped is finished)
-- or follows such an event in the same run, every event before it in the run taken too: a
-- failed or waiting event blocks the ones after it. A paused projection claims nothing.
--
-- Cost: the walk visits `outbox_heads` (one row per aggregate with unfinished events, see
-- migration 0007) oldest first and probes each aggregate's first unfinished events (at most $5)
-- through `outbox_events_aggregate_unfinished`, starting at the head's `next_seq`. It stops once
-- $2 events are found, so a claim costs O(batch), not O(backlog). The aggregates other batches
-- hold right now (the other loops', on every host) it passes with one read of their head, not a
-- probe: this claim marks the heads of the aggregates it takes with the end of their lease
-- (`claimed_until`, migration 0013; only heads it can lock without waiting), and whatever takes
-- their events out of `processing` clears the mark. The mark is a hint: the claim still decides
-- from the events whether one may go, and a mark left behind by a host that died ends with its
-- lease, when the run is reclaimed.
-- Rows this statement has already found are addressed by their tid (`ctid`) from then on: the
-- probed events are locked by it, and the events and heads locked here are updated by it, which
-- saves a primary-key descent per row each time (a fifth of the claim's buffers; the tid is
-- valid for the whole statement, whose snapshot keeps the tuples it saw from being pruned).
-- The runs, oldest aggregate first: each aggregate's first unfinished events in seq order, cut at
-- the first that may not go (an aggregate whose first event may not go yields nothing). No ORDER
-- BY outside: the lateral join yields one aggregate's run after another, and the LIMIT stops the
-- walk as soon as the batch is full (what it cuts is the tail of the last run; the recursive
-- walk is evaluated only as far as the LIMIT pulls it).
-- The walk over the heads is a recursive step from one head to the next in `next_seq` order
-- (each step one descent of `outbox_heads_claimable`, LIMIT 1), so it reads only the heads it
-- passes. Written as a plain ORDER BY, the planner read every head and sorted them at any batch
-- size (a seq scan of 20,000 heads per claim of 100 at 200k events on 20k aggregates: O(backlog)
-- again). `next_seq` is always the seq of an event of its aggregate, so it is unique within a
-- projection and `>` steps past exactly one head.
WITH RECURSIVE walk AS (
    (SELECT h.aggregate_id, h.next_seq, h.ctid AS head_tid
     FROM outbox_heads h
     WHERE h.projection = $1 AND NOT h.blocked AND h.not_before <= now()
          AND h.claimed_until <= now()
     ORDER BY h.next_seq
     LIMIT 1)
    UNION ALL
    SELECT n.aggregate_id, n.next_seq, n.head_tid
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT h.aggregate_id, h.next_seq, h.ctid AS head_tid
        FROM outbox_heads h
        WHERE h.projection = $1 AND NOT h.blocked AND h.not_before <= now()
          AND h.claimed_until <= now()
          AND h.next_seq > w.next_seq
        ORDER BY h.next_seq
        LIMIT 1
    ) n
),
runs AS (
    SELECT r.seq, r.tid, h.aggregate_id, h.head_tid, h.next_seq
    FROM walk h
    CROSS JOIN LATERAL (
        SELECT s.seq, s.tid
        FROM (
            SELECT e.seq, e.ctid AS tid,
                   bool_and(   (e.status = 'pending' AND e.next_retry_at <= now())
                            OR (e.status = 'processing' AND e.lease_expires_at < now()
                                AND e.attempts < $6))
                       OVER (ORDER BY e.seq) AS claimable
            FROM outbox_events e
            WHERE e.projection = $1 AND e.aggregate_id = h.aggregate_id
              AND e.seq >= h.next_seq AND e.status <> 'done' AND e.status <> 'skipped'
            ORDER BY e.seq
            LIMIT $5
        ) s
        WHERE s.claimable
    ) r
    WHERE NOT EXISTS (SELECT 1 FROM projection_pauses pp WHERE pp.projection = $1)
    LIMIT $2
),
locked AS (
    SELECT o.seq, o.ctid AS tid, o.status AS previous_status, o.payload::text AS payload_text
    FROM outbox_events o
    WHERE o.ctid = ANY (ARRAY(SELECT tid FROM runs))
      AND (   (o.status = 'pending' AND o.next_retry_at <= now())
           OR (o.status = 'processing' AND o.lease_expires_at < now() AND o.attempts < $6))
    FOR UPDATE OF o SKIP LOCKED
),
-- A run goes only as far as its events are all locked here: an event another claim holds (or
-- took meanwhile) ends its aggregate's run. Then the byte bound: the held events in the walk's
-- order (head by head, `next_seq` being the walk's key, each run in seq order) while their
-- payloads total at most $11, the first always. What it cuts is a tail of that order, so each
-- aggregate still gets a prefix of its run. Each chosen row carries what the UPDATE and its
-- RETURNING need (tid, previous status, payload), so the UPDATE reads it by tid and joins
-- nothing: a join of these CTEs is planned from their estimates (a row or two), and as a nested
-- loop it compared every pair, 124,750 for a batch of 500 behind a finished history
-- (`tests/delivery/claim_cost.rs`, whose control is that join).
chosen AS (
    SELECT y.seq, y.tid, y.aggregate_id, y.head_tid, y.previous_status, y.payload_text
    FROM (
        SELECT x.*,
               sum(x.bytes) OVER (ORDER BY x.next_seq, x.seq ROWS UNBOUNDED PRECEDING) AS total
        FROM (
            SELECT r.seq, l.tid, r.aggregate_id, r.head_tid, r.next_seq, l.previous_status,
                   l.payload_text,
                   CASE WHEN octet_length(l.payload_text) <= $8
                        THEN octet_length(l.payload_text) ELSE 0 END AS bytes,
                   bool_and(l.seq IS NOT NULL)
                       OVER (PARTITION BY r.aggregate_id ORDER BY r.seq) AS held
            FROM runs r
            LEFT JOIN locked l ON l.seq = r.seq
        ) x
        WHERE x.held
    ) y
    WHERE y.total <= $11 OR y.total = y.bytes
),
-- The taken aggregates' heads, marked in flight until the lease ends. Only heads locked here
-- without waiting: one an application's insert holds stays shown (that insert shows it anyway).
-- A data-modifying WITH runs to completion whether or not the UPDATE below reads it.
marked AS (
    UPDATE outbox_heads h
    SET claimed_until = now() + make_interval(secs => $7)
    FROM (SELECT m.ctid AS tid
          FROM outbox_heads m
          WHERE m.ctid = ANY (ARRAY(SELECT DISTINCT head_tid FROM chosen))
          FOR UPDATE OF m SKIP LOCKED) k
    WHERE h.ctid = k.tid
)
UPDATE outbox_events e
SET status = 'processing',
    claimed_by = $3,
    claim_batch_id = $4,
    lease_expires_at = now() + make_interval(secs => $7),
    processing_started_at = now(),
    attempts = e.attempts + 1
FROM chosen c
WHERE e.ctid = c.tid
-- (RETURNING: claim_returning.sql, appended by claim.rs)
