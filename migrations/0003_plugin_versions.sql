-- The plugin registry: every version of every projection's plugin the hosts were given, by
-- content digest. At most one version per projection is active; rollback re-activates the
-- previous one (its component is kept here, so any host can load it).
CREATE TABLE plugin_versions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection        text        NOT NULL,
    digest            text        NOT NULL,            -- sha256 of the component, hex
    declared_name     text,                            -- describe().name (NULL when rejected)
    declared_version  text,                            -- describe().version
    version_label     text,                            -- what outbox_events.projection_version holds
    component         bytea,                           -- NULL for rejected versions
    status            text        NOT NULL CHECK (status IN ('active', 'retired', 'rejected')),
    reason            text,                            -- why it was rejected
    loaded_at         timestamptz NOT NULL DEFAULT now(),
    activated_at      timestamptz,
    activated_by      text,
    UNIQUE (projection, digest)
);

CREATE UNIQUE INDEX plugin_versions_one_active ON plugin_versions (projection) WHERE status = 'active';
