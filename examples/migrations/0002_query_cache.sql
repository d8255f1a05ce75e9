-- The HR system's query cache (seeds 000/001): the position read model its GraphQL position
-- queries answer from, maintained by the `query-cache` projection (plugins/query-cache) from
-- position, assignment and job-level events. The projection needs both tables:
--
--   [projection.grants]
--   sql_tables = ["position_cache", "job_level_cache"]
--
-- API caches in front of it LISTEN on `query_cache_invalidate`: the projection notifies
-- `<tenant_id>:<position_code>` for every position a committed batch changed.

CREATE TABLE IF NOT EXISTS position_cache (
    tenant_id          text        NOT NULL,
    position_code      text        NOT NULL,
    title              text        NOT NULL,
    -- The position's job level, NULL when it has none.
    job_level_code     text,
    -- The newest version of that job level the projection has seen (jobLevel.versionCreated),
    -- NULL while it has seen none. Converges to the newest version whatever the order in which
    -- position and job-level events (different aggregates) are delivered.
    job_level_version  int,
    -- Planned headcount (payload `headcount`), NULL when the application did not give one.
    headcount_capacity int,
    -- Assignments currently filled: the entries of assignment_history whose closedAt is null.
    headcount_in_use   int         NOT NULL DEFAULT 0 CHECK (headcount_in_use >= 0),
    -- The position's assignments in fill order:
    -- [{"assignmentId", "employeeId", "filledAt", "closedAt"}], times in RFC 3339 UTC with
    -- microseconds (`2025-11-08T10:00:00.000000Z`), closedAt null while the assignment is open.
    assignment_history jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(assignment_history) = 'array'),
    -- Tombstone: the occurredAt of position.deleted. Readers filter `deleted_at IS NULL`. The row
    -- stays so that a redelivered older event cannot bring the position back.
    deleted_at         timestamptz,
    -- The outbox seq of the last position.* / assignment.* event applied to this row: the
    -- idempotency guard (an event whose seq is not above it has been applied already).
    last_event_seq     bigint      NOT NULL,
    -- The business time (occurredAt) and requestId of that event, to trace the row to a command.
    last_occurred_at   timestamptz NOT NULL,
    last_request_id    text,
    -- When the projection last changed the row (job-level versions included).
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, position_code)
);

-- jobLevel.versionCreated updates every position of the job level.
CREATE INDEX IF NOT EXISTS position_cache_job_level ON position_cache (tenant_id, job_level_code);

-- The newest version of each job level, so that a position moving to a job level learns its
-- version even when the job level's events were delivered before the position's.
CREATE TABLE IF NOT EXISTS job_level_cache (
    tenant_id      text        NOT NULL,
    job_level_code text        NOT NULL,
    version        int         NOT NULL,
    -- The outbox seq of the jobLevel.versionCreated event that set `version`.
    last_event_seq bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, job_level_code)
);
