-- Aggregates in flight stay out of the ordered claim's walk (issue 13).
--
-- The walk (claim_ordered.sql) visits heads oldest first and probes each one's events. The
-- heads of aggregates whose run another batch holds right now are still there (a claim does not
-- finish anything), so every claim probed them all and found nothing to take: with the events
-- of L loops in flight, a claim of 100 visited about 100·L heads. Measured on 100k events over
-- 10k aggregates (EXPLAIN ANALYZE, BUFFERS): 3,327 buffers with no batch in flight, 9,063 with
-- seven (four hosts of two loops each have seven other batches in flight), so every host added
-- to a projection made each of its claims dearer, and the claims of a projection run one at a
-- time across hosts.
--
-- `claimed_until`: the end of the lease a claim gave the aggregate's run. The claim sets it on
-- the heads of the aggregates it took (a HOT update: the column is in no index), and the walk
-- passes a head whose `claimed_until` is in the future with one read of the head, without
-- probing its events. It is a hint, like `not_before`:
--   - a head shown when its aggregate is in flight costs a probe, as before this migration;
--   - a head hidden when its aggregate could go delays the aggregate until the lease it was
--     given ends, and no longer: then the walk sees it again, which is also how a run whose host
--     died is reclaimed, as before.
-- So everything that takes an aggregate's events out of `processing` shows its head again: the
-- settle for the aggregates it finished events of (settle.sql), the status trigger below for the
-- others (a retry, a run handed back, a failure, a release at shutdown), and an application's
-- insert into the aggregate (which may hold the head while a settle runs: the settle then
-- leaves the head as it is). A claim never waits for a head: it marks only the heads it can
-- lock at once (SKIP LOCKED), and a head it cannot lock stays shown.
ALTER TABLE outbox_heads ADD COLUMN claimed_until timestamptz NOT NULL DEFAULT '-infinity';

CREATE OR REPLACE FUNCTION outbox_heads_on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO outbox_heads AS h (projection, aggregate_id, next_seq, blocked)
    SELECT projection, aggregate_id, min(seq), bool_or(status = 'failed')
    FROM inserted
    WHERE status IN ('pending', 'processing', 'failed')
    GROUP BY projection, aggregate_id
    ORDER BY projection, aggregate_id
    ON CONFLICT (projection, aggregate_id) DO UPDATE
    SET next_seq = least(h.next_seq, excluded.next_seq),
        blocked = h.blocked OR excluded.blocked,
        claimed_until = '-infinity',
        version = h.version + 1;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION outbox_heads_on_status() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    finished_before boolean := OLD.status IN ('done', 'skipped');
    finished_now boolean := NEW.status IN ('done', 'skipped');
BEGIN
    IF finished_before AND NOT finished_now THEN
        INSERT INTO outbox_heads AS h (projection, aggregate_id, next_seq, blocked)
        VALUES (NEW.projection, NEW.aggregate_id, NEW.seq, NEW.status = 'failed')
        ON CONFLICT (projection, aggregate_id) DO UPDATE
        SET next_seq = least(h.next_seq, excluded.next_seq),
            blocked = h.blocked OR excluded.blocked,
            claimed_until = '-infinity',
            version = h.version + 1;
        RETURN NULL;
    END IF;
    -- Leaving `failed` (a replay, a skip) must clear `blocked`, or the aggregate would stay out
    -- of the claim's walk: that waits for the row. Everything else here is a hint (a failed
    -- aggregate still walked costs a probe, an early `not_before` a probe too, a late
    -- `claimed_until` a wait until the lease it names ends) and is skipped when another
    -- transaction holds the row: a settle never waits on an application's insert, which shows
    -- the head itself.
    IF OLD.status <> 'failed' THEN
        PERFORM 1 FROM outbox_heads h
        WHERE h.projection = NEW.projection AND h.aggregate_id = NEW.aggregate_id
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    UPDATE outbox_heads h
    SET blocked = CASE
                      WHEN NEW.status = 'failed' THEN true
                      WHEN OLD.status = 'failed' THEN false
                      ELSE h.blocked
                  END,
        -- Only the aggregate's first unfinished event is ever retried with a delay; the events
        -- of a run handed back and released ones are due now and must not pull it earlier.
        not_before = CASE
                         WHEN NEW.status = 'pending' THEN greatest(h.not_before, NEW.next_retry_at)
                         ELSE h.not_before
                     END,
        -- The event left `processing`: its run is no longer in flight.
        claimed_until = CASE WHEN OLD.status = 'processing' THEN '-infinity' ELSE h.claimed_until END
    WHERE h.projection = NEW.projection AND h.aggregate_id = NEW.aggregate_id;
    RETURN NULL;
END;
$$;

-- CREATE OR REPLACE drops the functions' settings: run them with the same search path as in
-- migration 0007 (only the owner's schema and pg_catalog), still not callable by PUBLIC.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['outbox_heads_on_insert', 'outbox_heads_on_status'] LOOP
        EXECUTE format('ALTER FUNCTION %I() SET search_path = pg_catalog, %I, pg_temp',
                       f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %I() FROM PUBLIC', f);
    END LOOP;
END;
$$;
