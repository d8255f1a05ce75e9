-- Less written per event delivered (issue 13). Measured with pg_walinspect over a noop drain
-- (claim + settle loop of batch 100, 200k events on 20k aggregates): before this migration each
-- event wrote about 4.8 kB of WAL, 9 b-tree inserts, 4 heap lock records; the independent job
-- queue of the bench writes 1.7 kB.
--
-- 1. Room on each page for the row's next versions. A claim and a settle each write a new
--    version of the row; on a full page (fillfactor 100, what a bulk insert leaves) the new
--    version goes to another page, which costs a heap lock record on the old page and logs the
--    whole new tuple (~450 bytes). On the same page Postgres logs only the changed middle of the
--    tuple and no lock record. Heads are rewritten by every settle that finishes an event.
--    Applies to pages written from now on.
ALTER TABLE outbox_events SET (fillfactor = 70);
ALTER TABLE outbox_heads SET (fillfactor = 50);

-- 2. No index on the fencing token. Every claim inserted an entry into it for each claimed row;
--    its readers now find rows by seq (lease renewal: the batch's seqs, fenced by the token as
--    before) or scan `outbox_events_claimable`, which holds only unfinished rows (a worker's
--    release at shutdown).
DROP INDEX outbox_events_claim_batch;

-- 3. Event ids in time order. `id` is unique, so every new version of a row (claim, settle)
--    inserts an entry into its index at the id's place; with random v4 ids those are random
--    pages, each logged whole the first time it changes after a checkpoint. A v7-style id
--    (48 bits of Unix milliseconds, then random bits, RFC 9562 layout) keeps the entries of
--    events written together on the same few pages. Applications that supply their own ids
--    keep them; the column stays `uuid`.
CREATE FUNCTION outbox_event_id() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
ALTER FUNCTION outbox_event_id() SET search_path = pg_catalog, pg_temp;
ALTER TABLE outbox_events ALTER COLUMN id SET DEFAULT outbox_event_id();
