-- Rebuilds (host/src/rebuild/) and retention (host/src/outbox/retention.rs).
--
-- `created_xid` is the transaction that inserted the event. A zero-downtime rebuild reads the
-- source of truth in one snapshot; since the application writes its source rows and its outbox
-- rows in one transaction, `pg_visible_in_snapshot(created_xid, snapshot)` says exactly which
-- events the rebuilt model already contains. Rows inserted before this migration have NULL:
-- they are older than any rebuild snapshot. Adding a nullable column rewrites nothing.
ALTER TABLE outbox_events ADD COLUMN created_xid xid8;
ALTER TABLE outbox_events ALTER COLUMN created_xid SET DEFAULT pg_current_xact_id();

-- One row per rebuild: what ran, how far it got, and how it ended. The running hosts export the
-- latest finished one per projection as the `projector_rebuild_*` metrics.
CREATE TABLE projector_rebuilds (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection     text        NOT NULL,
    mode           text        NOT NULL CHECK (mode IN ('direct', 'outbox', 'zero_downtime')),
    source         text        NOT NULL,
    truncate       boolean     NOT NULL,
    started_by     text        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    status         text        NOT NULL DEFAULT 'running'
                               CHECK (status IN ('running', 'succeeded', 'failed')),
    rows_read      bigint      NOT NULL DEFAULT 0,
    rows_applied   bigint      NOT NULL DEFAULT 0,
    rows_failed    bigint      NOT NULL DEFAULT 0,
    caught_up      bigint      NOT NULL DEFAULT 0,
    error          text
);
CREATE INDEX projector_rebuilds_latest ON projector_rebuilds (projection, finished_at DESC);

-- Retention deletes old `done` rows oldest first.
CREATE INDEX outbox_events_done ON outbox_events (done_at) WHERE status = 'done';
