-- Operator transitions (host/src/outbox/operator.rs): `skipped` is a terminal state an operator
-- gives a failed event so its aggregate continues; every replay and skip (dry runs too) is
-- audited; a paused projection claims nothing until resumed.
ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_status_check;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_status_check
    CHECK (status IN ('pending', 'processing', 'done', 'failed', 'skipped'));

CREATE TABLE replay_audit (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action        text        NOT NULL CHECK (action IN ('replay', 'skip')),
    projection    text        NOT NULL,
    performed_by  text        NOT NULL CHECK (performed_by <> ''),
    performed_at  timestamptz NOT NULL DEFAULT now(),
    reason        text        NOT NULL CHECK (reason <> ''),
    filter        jsonb       NOT NULL,
    dry_run       boolean     NOT NULL,
    row_count     integer     NOT NULL,
    event_ids     uuid[]      NOT NULL
);

CREATE TABLE projection_pauses (
    projection  text PRIMARY KEY,
    paused_by   text        NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    reason      text
);
