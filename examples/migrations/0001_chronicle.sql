-- The chronicle application's tables (seed 004). `chronicle_events` is the source of truth the
-- application writes; `chronicle_entries` is the read model the `chronicle-entries` projection
-- maintains (entries.id = the chronicle event's id, so replays and rebuilds never duplicate).

CREATE TABLE IF NOT EXISTS chronicle_events (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor_user_id  text        NOT NULL,
    entity_type    text        NOT NULL,   -- book / block / tag ...
    entity_id      text        NOT NULL,
    event_type     text        NOT NULL,   -- BookRenamed / BlockUpdated / TagAdded ...
    before         jsonb,
    after          jsonb,
    occurred_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    request_id     text,
    reason         text
);

CREATE TABLE IF NOT EXISTS chronicle_entries (
    id             uuid PRIMARY KEY,        -- = chronicle_events.id
    actor_user_id  text        NOT NULL,
    entity_type    text        NOT NULL,
    entity_id      text        NOT NULL,
    event_type     text        NOT NULL,
    summary        text        NOT NULL,
    before         jsonb,
    after          jsonb,
    occurred_at    timestamptz NOT NULL,
    request_id     text,
    reason         text,
    projected_at   timestamptz NOT NULL DEFAULT now()
);

-- Stable paging: ORDER BY occurred_at, id with a (occurred_at, id) cursor.
CREATE INDEX IF NOT EXISTS chronicle_entries_paging ON chronicle_entries (occurred_at, id);
CREATE INDEX IF NOT EXISTS chronicle_entries_entity ON chronicle_entries (entity_type, entity_id, occurred_at);
