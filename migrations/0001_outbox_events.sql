-- The outbox table: one row per event per projection, written by the application in the same
-- transaction as its business change, delivered by projector.
--
-- An application inserts only `projection, event_type, aggregate_id, payload` (and optionally
-- `aggregate_type, headers, occurred_at`); every other column has a default and belongs to the
-- host. The delivery state machine (pending -> processing -> done | pending-with-retry | failed)
-- is enforced by the statements in host/src/outbox/*.sql, documented in host/src/outbox/mod.rs.

CREATE TABLE outbox_events (
    seq                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                     uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    projection             text        NOT NULL CHECK (projection <> ''),
    event_type             text        NOT NULL CHECK (event_type <> ''),
    aggregate_type         text        NOT NULL DEFAULT '',
    aggregate_id           text        NOT NULL,
    payload                jsonb       NOT NULL,
    headers                jsonb       NOT NULL DEFAULT '{}'::jsonb
                                       CHECK (jsonb_typeof(headers) = 'object'),
    occurred_at            timestamptz NOT NULL DEFAULT now(),
    created_at             timestamptz NOT NULL DEFAULT now(),

    -- delivery state
    status                 text        NOT NULL DEFAULT 'pending'
                                       CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    attempts               integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_retry_at          timestamptz NOT NULL DEFAULT now(),
    claimed_by             text,
    claim_batch_id         uuid,
    lease_expires_at       timestamptz,
    processing_started_at  timestamptz,
    done_at                timestamptz,
    error_reason           text,
    error                  text,
    -- why a failed row is failed: 'deterministic' (the plugin said so) or 'attempts_exhausted'
    failure_kind           text        CHECK (failure_kind IN ('deterministic', 'attempts_exhausted')),
    projection_version     text,

    -- replay audit
    replay_count           integer     NOT NULL DEFAULT 0,
    last_replayed_at       timestamptz,
    last_replayed_by       text,
    last_replayed_reason   text
);

-- Claiming scans only unfinished rows of one projection in seq order: millions of done rows are
-- not in this index, so the claim costs the batch, not the table.
CREATE INDEX outbox_events_claimable
    ON outbox_events (projection, seq)
    WHERE status IN ('pending', 'processing');

-- Per-aggregate ordering: "is there an earlier row of this aggregate that is not done yet?"
CREATE INDEX outbox_events_aggregate_unfinished
    ON outbox_events (projection, aggregate_id, seq)
    WHERE status <> 'done';

-- Fencing and shutdown release look rows up by the claim that holds them.
CREATE INDEX outbox_events_claim_batch
    ON outbox_events (claim_batch_id)
    WHERE status = 'processing';

-- Failed rows by reason (status, replay).
CREATE INDEX outbox_events_failed
    ON outbox_events (projection, error_reason)
    WHERE status = 'failed';

-- Wake listening hosts once per inserting statement and projection, not once per row.
CREATE FUNCTION outbox_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    p text;
BEGIN
    FOR p IN SELECT DISTINCT projection FROM inserted LOOP
        PERFORM pg_notify('projector_outbox', p);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_events_notify
    AFTER INSERT ON outbox_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();
