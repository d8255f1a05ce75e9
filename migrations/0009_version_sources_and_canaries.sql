-- Which version of a projection is active, and why (docs/plugins.md, "Which version runs"):
-- every activation records its source, and a new version may first run as a canary for a
-- stable share of aggregates, beside the active one, until it is promoted or rolled back.
ALTER TABLE plugin_versions ADD COLUMN source text
    CHECK (source IN ('file', 'upload', 'rollback', 'canary', 'promote'));
UPDATE plugin_versions
SET source = CASE WHEN activated_by LIKE 'startup:%' OR activated_by LIKE 'file:%' THEN 'file'
                  ELSE 'upload' END
WHERE activated_at IS NOT NULL;

-- A canary version has status `canary`: at most one per projection, beside the one active.
ALTER TABLE plugin_versions DROP CONSTRAINT plugin_versions_status_check;
ALTER TABLE plugin_versions ADD CONSTRAINT plugin_versions_status_check
    CHECK (status IN ('active', 'retired', 'rejected', 'canary'));
CREATE UNIQUE INDEX plugin_versions_one_canary ON plugin_versions (projection) WHERE status = 'canary';

-- Every canary rollout, running or decided: its audit record. The counters are the outcomes
-- each side's settles recorded since it started (one per event attempt): `transient` those
-- retried, `terminal` those that failed for good.
CREATE TABLE plugin_canaries (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection         text        NOT NULL,
    baseline_id        bigint      NOT NULL REFERENCES plugin_versions (id),
    canary_id          bigint      NOT NULL REFERENCES plugin_versions (id),
    share_percent      integer     NOT NULL CHECK (share_percent BETWEEN 1 AND 99),
    min_events         bigint      NOT NULL CHECK (min_events > 0),
    margin_percent     double precision NOT NULL CHECK (margin_percent >= 0),
    state              text        NOT NULL DEFAULT 'running'
                                   CHECK (state IN ('running', 'promoted', 'rolled_back', 'aborted')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    started_by         text        NOT NULL,
    decided_at         timestamptz,
    decided_by         text,                    -- an operator, or `auto:<worker>`
    reason             text,                    -- why it was promoted, rolled back or aborted
    baseline_events    bigint      NOT NULL DEFAULT 0,
    baseline_transient bigint      NOT NULL DEFAULT 0,
    baseline_terminal  bigint      NOT NULL DEFAULT 0,
    canary_events      bigint      NOT NULL DEFAULT 0,
    canary_transient   bigint      NOT NULL DEFAULT 0,
    canary_terminal    bigint      NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX plugin_canaries_one_running ON plugin_canaries (projection) WHERE state = 'running';
