-- Per-aggregate ordering at a cost of O(batch) per claim, whatever the skew (claim_ordered.sql).
--
-- `outbox_heads` has one row per projection and aggregate with unfinished events (`pending`,
-- `processing` or `failed`): the ordered claim walks these rows, not the backlog, so 20k
-- events on 20 aggregates cost a claim 20 probes instead of a walk past 19k rows that must wait.
--
-- The rows are kept by triggers on `outbox_events`, for every writer (the application's inserts,
-- the host's settles, operator replays and skips, retention, a hand-written UPDATE), so the
-- claim never has to trust any one code path to remember them. Invariants:
--   - every (projection, aggregate_id) with an unfinished event has a row;
--   - `unfinished` counts those events (a row is deleted when it reaches 0 and none is visible);
--   - `next_seq` is at most the seq of the aggregate's earliest unfinished event (a lower bound
--     the claim's probe starts from, so it does not walk the aggregate's finished history);
--   - `blocked` is set when an event of the aggregate became `failed` and cleared when one left
--     `failed` (replay, skip); `not_before` is the latest retry time an event of the aggregate
--     was given. Both are hints that keep waiting aggregates out of the claim's walk: the claim
--     still decides from the events themselves whether the first unfinished one may go.
--
-- Concurrency: an inserting transaction updates its aggregates' rows (ON CONFLICT DO UPDATE), so
-- it holds their row locks until it commits. A settle that would delete a row or move
-- `next_seq` forward decided from a snapshot that cannot see such an insert; Postgres re-checks
-- the locked row's newest version (EvalPlanQual), where `unfinished` is no longer 0 and
-- `version` no longer what the snapshot saw, so the row stays and `next_seq` is not moved past
-- the new event. Inserting transactions take their aggregates' row locks in (projection,
-- aggregate_id) order within one statement.
CREATE TABLE outbox_heads (
    projection    text        NOT NULL,
    aggregate_id  text        NOT NULL,
    next_seq      bigint      NOT NULL,
    unfinished    bigint      NOT NULL,
    blocked       boolean     NOT NULL DEFAULT false,
    not_before    timestamptz NOT NULL DEFAULT '-infinity',
    version       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, aggregate_id)
);

-- The claim's walk: the oldest aggregates first, blocked ones left out.
CREATE INDEX outbox_heads_claimable ON outbox_heads (projection, next_seq) WHERE NOT blocked;

INSERT INTO outbox_heads (projection, aggregate_id, next_seq, unfinished, blocked)
SELECT projection, aggregate_id, min(seq), count(*), bool_or(status = 'failed')
FROM outbox_events
WHERE status IN ('pending', 'processing', 'failed')
GROUP BY projection, aggregate_id;

CREATE FUNCTION outbox_heads_on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO outbox_heads AS h (projection, aggregate_id, next_seq, unfinished, blocked)
    SELECT projection, aggregate_id, min(seq), count(*), bool_or(status = 'failed')
    FROM inserted
    WHERE status IN ('pending', 'processing', 'failed')
    GROUP BY projection, aggregate_id
    ORDER BY projection, aggregate_id
    ON CONFLICT (projection, aggregate_id) DO UPDATE
    SET next_seq = least(h.next_seq, excluded.next_seq),
        unfinished = h.unfinished + excluded.unfinished,
        blocked = h.blocked OR excluded.blocked,
        version = h.version + 1;
    RETURN NULL;
END;
$$;

CREATE FUNCTION outbox_heads_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    empty_projections text[];
    empty_aggregates text[];
BEGIN
    -- A claim or a lease renewal (every row ends `processing`, none was finished) changes no
    -- head: leave before the join below.
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE status <> 'processing')
       AND NOT EXISTS (SELECT 1 FROM old_rows WHERE status IN ('done', 'skipped')) THEN
        RETURN NULL;
    END IF;
    -- Per aggregate, what the statement changed (a claim, pending -> processing, changes nothing
    -- here and stops at the HAVING).
    WITH change AS (
        SELECT n.projection, n.aggregate_id,
               count(*) FILTER (WHERE o.status IN ('done', 'skipped'))
                 - count(*) FILTER (WHERE n.status IN ('done', 'skipped')) AS delta,
               min(n.seq) FILTER (WHERE o.status IN ('done', 'skipped')) AS reopened,
               bool_or(n.status = 'failed') AS failed_now,
               bool_or(o.status = 'failed') AS failed_before,
               max(n.next_retry_at) FILTER (WHERE n.status = 'pending') AS retry_at
        FROM old_rows o
        JOIN new_rows n ON n.seq = o.seq
        WHERE o.status <> n.status
          AND NOT (o.status IN ('done', 'skipped') AND n.status IN ('done', 'skipped'))
        GROUP BY n.projection, n.aggregate_id
        HAVING count(*) FILTER (WHERE o.status IN ('done', 'skipped'))
                 <> count(*) FILTER (WHERE n.status IN ('done', 'skipped'))
            OR bool_or(n.status = 'failed') OR bool_or(o.status = 'failed')
            OR bool_or(n.status = 'pending')
    ),
    seen AS (
        SELECT c.*, h.version AS seen_version, h.projection IS NOT NULL AS present,
               (SELECT e.seq
                FROM outbox_events e
                WHERE e.projection = c.projection AND e.aggregate_id = c.aggregate_id
                  AND e.seq >= coalesce(h.next_seq, 0)
                  AND e.status <> 'done' AND e.status <> 'skipped'
                ORDER BY e.seq
                LIMIT 1) AS first_unfinished
        FROM change c
        LEFT JOIN outbox_heads h ON h.projection = c.projection AND h.aggregate_id = c.aggregate_id
    ),
    reopened AS (
        INSERT INTO outbox_heads AS h (projection, aggregate_id, next_seq, unfinished, blocked, not_before)
        SELECT projection, aggregate_id, reopened, delta, failed_now, coalesce(retry_at, '-infinity')
        FROM seen
        WHERE NOT present AND reopened IS NOT NULL
        ORDER BY projection, aggregate_id
        ON CONFLICT (projection, aggregate_id) DO UPDATE
        SET next_seq = least(h.next_seq, excluded.next_seq),
            unfinished = h.unfinished + excluded.unfinished,
            blocked = h.blocked OR excluded.blocked,
            version = h.version + 1
    ),
    changed AS (
        UPDATE outbox_heads h
        SET unfinished = h.unfinished + s.delta,
            next_seq = CASE
                           WHEN h.version = s.seen_version
                               THEN coalesce(least(s.first_unfinished, s.reopened), h.next_seq)
                           ELSE least(h.next_seq, s.reopened)
                       END,
            blocked = CASE
                          WHEN s.failed_now THEN true
                          WHEN s.failed_before THEN false
                          ELSE h.blocked
                      END,
            not_before = coalesce(s.retry_at, h.not_before),
            version = h.version + 1
        FROM seen s
        WHERE s.present AND h.projection = s.projection AND h.aggregate_id = s.aggregate_id
        RETURNING h.projection, h.aggregate_id, h.unfinished, s.first_unfinished, s.reopened
    )
    SELECT array_agg(projection), array_agg(aggregate_id)
    INTO empty_projections, empty_aggregates
    FROM changed
    WHERE unfinished <= 0 AND first_unfinished IS NULL AND reopened IS NULL;

    IF empty_projections IS NOT NULL THEN
        -- Re-checked on the newest row version: an insert that committed meanwhile (or still
        -- holds the row) raised `unfinished`, and the row stays.
        DELETE FROM outbox_heads h
        USING unnest(empty_projections, empty_aggregates) AS g(projection, aggregate_id)
        WHERE h.projection = g.projection AND h.aggregate_id = g.aggregate_id
          AND h.unfinished <= 0;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION outbox_heads_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    WITH gone AS (
        SELECT projection, aggregate_id, count(*) AS n
        FROM deleted
        WHERE status IN ('pending', 'processing', 'failed')
        GROUP BY projection, aggregate_id
    ),
    changed AS (
        UPDATE outbox_heads h
        SET unfinished = h.unfinished - g.n, version = h.version + 1
        FROM gone g
        WHERE h.projection = g.projection AND h.aggregate_id = g.aggregate_id
        RETURNING h.projection, h.aggregate_id, h.unfinished
    )
    DELETE FROM outbox_heads h
    USING changed c
    WHERE h.projection = c.projection AND h.aggregate_id = c.aggregate_id AND c.unfinished <= 0
      AND NOT EXISTS (
          SELECT 1 FROM outbox_events e
          WHERE e.projection = c.projection AND e.aggregate_id = c.aggregate_id
            AND e.status IN ('pending', 'processing', 'failed'));
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
    FOREACH f IN ARRAY ARRAY['outbox_heads_on_insert', 'outbox_heads_on_update',
                             'outbox_heads_on_delete', 'outbox_heads_on_truncate'] LOOP
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

CREATE TRIGGER outbox_heads_on_update
    AFTER UPDATE ON outbox_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_on_update();

CREATE TRIGGER outbox_heads_on_delete
    AFTER DELETE ON outbox_events
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_on_delete();

CREATE TRIGGER outbox_heads_on_truncate
    AFTER TRUNCATE ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_on_truncate();
