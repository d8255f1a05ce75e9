-- Per-aggregate ordering at a cost of O(batch) per claim, whatever the skew (claim_ordered.sql).
--
-- `outbox_heads` has one row per projection and aggregate with unfinished events (`pending`,
-- `processing` or `failed`): the ordered claim walks these rows, not the backlog, so 20k
-- events on 20 aggregates cost a claim 20 probes instead of a walk past 19k rows that must wait.
--
-- Invariants:
--   - every (projection, aggregate_id) with an unfinished event has a row: the insert trigger
--     below adds it in the inserting transaction, and a row is removed only by a statement that
--     saw no unfinished event of the aggregate *and* found the row unchanged since its snapshot
--     (`version`, bumped by every insert);
--   - `next_seq` is at most the seq of the aggregate's earliest unfinished event (a lower bound
--     the claim's probe starts from, so it does not walk the aggregate's finished history); it is
--     moved forward under the same `version` check;
--   - `blocked` is set while an event of the aggregate is `failed` and `not_before` is the retry
--     time an event of it was last given: hints that keep waiting aggregates out of the claim's
--     walk. The claim still decides from the events themselves whether one may go.
--
-- Who writes it: the application's inserts (statement trigger), the settle statement
-- (settle.sql: advances or removes the heads of the aggregates whose events it finished), row
-- triggers for the rarer transitions (into or out of `failed`, back to `pending`, a finished
-- event made unfinished again, a finished one not through a settle), and the reclaim sweep,
-- which removes heads left empty (outbox/heads.rs). Claims and lease renewals do not touch it.
--
-- Concurrency: an inserting transaction updates its aggregates' rows (ON CONFLICT DO UPDATE
-- bumps `version`), so it holds their row locks until it commits, taking them in (projection,
-- aggregate_id) order. The host never waits for such a lock where it could deadlock with the
-- application: the settle and the sweep lock heads with SKIP LOCKED and change only those whose
-- `version` is still the one their snapshot saw (an insert that raced them leaves the head as it
-- was, a lower bound still), and the status trigger waits only to clear `blocked` (operator
-- replays and skips).
CREATE TABLE outbox_heads (
    projection    text        NOT NULL,
    aggregate_id  text        NOT NULL,
    next_seq      bigint      NOT NULL,
    blocked       boolean     NOT NULL DEFAULT false,
    not_before    timestamptz NOT NULL DEFAULT '-infinity',
    version       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, aggregate_id)
);

-- The claim's walk: the oldest aggregates first, blocked ones left out.
CREATE INDEX outbox_heads_claimable ON outbox_heads (projection, next_seq) WHERE NOT blocked;

INSERT INTO outbox_heads (projection, aggregate_id, next_seq, blocked)
SELECT projection, aggregate_id, min(seq), bool_or(status = 'failed')
FROM outbox_events
WHERE status IN ('pending', 'processing', 'failed')
GROUP BY projection, aggregate_id;
-- The ordered claim's plan depends on this table's statistics (with none, the planner takes it
-- for empty and sorts and joins accordingly); autovacuum keeps them from here on.
ANALYZE outbox_heads;

CREATE FUNCTION outbox_heads_on_insert() RETURNS trigger
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
        version = h.version + 1;
    RETURN NULL;
END;
$$;

-- One row changed status in a way a settle does not handle: into or out of `failed`, back to
-- `pending` after processing (a retry, a run handed back, a release), made unfinished again, or
-- finished other than from `processing` (skip, a rebuild's supersede). Rare, so per row.
CREATE FUNCTION outbox_heads_on_status() RETURNS trigger
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
            version = h.version + 1;
        RETURN NULL;
    END IF;
    -- Leaving `failed` (a replay, a skip) must clear `blocked`, or the aggregate would stay out
    -- of the claim's walk: that waits for the row. Everything else here is a hint (a failed
    -- aggregate still walked costs a probe, an early `not_before` a probe too) and is skipped
    -- when another transaction holds the row: a settle never waits on an application's insert.
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
                     END
    WHERE h.projection = NEW.projection AND h.aggregate_id = NEW.aggregate_id;
    RETURN NULL;
END;
$$;

CREATE FUNCTION outbox_heads_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM outbox_heads;
    RETURN NULL;
END;
$$;

-- The functions run as their owner (the application's role needs no privilege on
-- outbox_heads) with a search path that only the owner's schema and pg_catalog are on.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['outbox_heads_on_insert', 'outbox_heads_on_status',
                             'outbox_heads_on_truncate'] LOOP
        EXECUTE format('ALTER FUNCTION %I() SET search_path = pg_catalog, %I, pg_temp',
                       f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %I() FROM PUBLIC', f);
    END LOOP;
END;
$$;

CREATE TRIGGER outbox_heads_on_insert
    AFTER INSERT ON outbox_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_on_insert();

CREATE TRIGGER outbox_heads_on_status
    AFTER UPDATE OF status ON outbox_events
    FOR EACH ROW
    WHEN (   (OLD.status IN ('done', 'skipped') AND NEW.status NOT IN ('done', 'skipped'))
          OR ((OLD.status = 'failed') <> (NEW.status = 'failed'))
          OR (OLD.status = 'processing' AND NEW.status = 'pending')
          OR (OLD.status NOT IN ('processing', 'done', 'skipped')
              AND NEW.status IN ('done', 'skipped')))
    EXECUTE FUNCTION outbox_heads_on_status();

CREATE TRIGGER outbox_heads_on_truncate
    AFTER TRUNCATE ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_on_truncate();
