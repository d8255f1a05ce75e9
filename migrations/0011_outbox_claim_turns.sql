-- Ordered claims take turns, across every host (issue 13). Two ordered claims running at the
-- same moment walk the same heads and see the same candidates: the one that locks them second
-- gets none of them (SKIP LOCKED) and comes back empty or short, its whole walk wasted, and its
-- loop slept until the next poll. Measured on a 100k-event noop drain with two loops: 31 of
-- 1,033 claims came back empty that way, and the loops spent more than half of the drain
-- asleep; with four hosts, two of them finished 483 of 50,000 events between them.
--
-- The claim's transaction first locks its projection's row here (claim.rs, claim_turn.sql), so
-- the next ordered claim of the projection starts only once this one has committed, and its
-- statement's snapshot sees what this one claimed: it walks past those aggregates instead of
-- colliding. Claims of different projections do not wait for each other; settles, inserts and
-- unordered claims (which lock as they scan and cannot collide this way) never take it.
--
-- A row lock on a table of the host's own rather than an advisory lock: a plugin's `sql` role
-- may take transaction-level advisory locks (query-cache does), and could take this one to stall
-- every claim; it has no privilege on this table, so it cannot lock its rows.
CREATE TABLE outbox_claim_turns (
    projection text PRIMARY KEY
);
