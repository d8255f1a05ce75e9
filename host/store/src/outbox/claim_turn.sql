-- Waits for projection $1's turn to claim (migration 0011): the row lock is held until the
-- claim's transaction ends. The row is made on the projection's first claim; after that the
-- upsert only locks it.
--   $2: idle_in_transaction_session_timeout for this transaction (milliseconds, as text). Between
--       the claim statement and COMMIT the host holds every host's turn across one round trip;
--       a host stopped right there (SIGSTOP, a stall) has its session ended by the server after
--       this long, which rolls its claim back (nothing was handed to a plugin) and gives the
--       turn to the next claimer, instead of stalling the projection on every host.
--   The claim's transaction also commits without waiting for its WAL to reach the disk
--   (`synchronous_commit = off` for this transaction only): the turn is held until COMMIT
--   returns, and the flush was most of that wait. What a crash can lose is the claim, never
--   an outcome: the settle commits synchronously, and its flush covers the WAL of the claim
--   before it. A claim lost that way is as if its lease had expired: its rows are `pending`
--   again, and a batch a plugin already had is fenced off at its settle and delivered again
--   (at least once, as after any reclaim).
INSERT INTO outbox_claim_turns AS t (projection)
SELECT $1 FROM (SELECT set_config('idle_in_transaction_session_timeout', $2, true),
                       set_config('synchronous_commit', 'off', true)) AS bounded
ON CONFLICT (projection) DO UPDATE SET projection = t.projection
