//! `query-cache` (seeds 000/001): projects the HR system's position, assignment and job-level
//! events into the position read model its GraphQL queries answer from (`position_cache`, with
//! `job_level_cache` beside it; see `examples/migrations/0002_query_cache.sql`) through the
//! host's `sql` capability, and tells API caches which positions changed.
//!
//! Payloads are flat JSON objects: the seed's envelope (`tenantId`, `occurredAt` required;
//! `requestId`, `correlationId`, `source`, `aggregateId` expected, `requestId` kept as the row's
//! `last_request_id`) plus, per event type:
//!
//! | event type                | required                                     | optional                             |
//! | ------------------------- | -------------------------------------------- | ------------------------------------ |
//! | `position.created`        | `positionCode`, `title`                      | `jobLevelCode`, `headcount`          |
//! | `position.updated`        | `positionCode`, one optional field           | `title`, `jobLevelCode`, `headcount` |
//! | `position.deleted`        | `positionCode`                               |                                      |
//! | `assignment.filled`       | `positionCode`, `assignmentId`, `employeeId` |                                      |
//! | `assignment.closed`       | `positionCode`, `assignmentId`               |                                      |
//! | `jobLevel.versionCreated` | `jobLevelCode`, `version` (integer ≥ 1)      |                                      |
//!
//! Strings must be non-empty, `headcount` an integer ≥ 0, `occurredAt` a timestamp Postgres
//! accepts; anything else is a deterministic `bad_payload`. Other event types are a deterministic
//! `unknown_event_type`.
//!
//! Ordering: every `position.*` and `assignment.*` event of one position must carry the same
//! aggregate id (e.g. `position:<tenantId>:<positionCode>`), and the projection must run with the
//! default `ordering = "aggregate"`, so they arrive in `seq` order. Job levels are aggregates of
//! their own (e.g. `jobLevel:<tenantId>:<jobLevelCode>`).
//!
//! Idempotency (applying an event twice changes nothing, not even `updated_at`):
//! - A position or assignment event whose `seq` is not above the row's `last_event_seq` has been
//!   applied already: success, nothing written, nothing notified. Filling an assignment id the
//!   history already holds, closing one already closed, and deleting a deleted position are no-ops
//!   as well.
//! - `jobLevel.versionCreated` is guarded by the version, not by a position's seq (its aggregate
//!   is the job level): `job_level_cache` and each position of that job level only ever move to
//!   a higher version. It updates deleted positions too, so the read model converges to the same
//!   state whatever the interleaving of the two aggregates. A position event that sets a job
//!   level and a job-level event take the same transaction-scoped advisory lock, so a position
//!   moving to a job level never misses a version committed concurrently.
//!
//! Semantics: `position.created` for an existing code replaces the descriptive fields and clears
//! the tombstone (the history stays); `position.deleted` sets the tombstone `deleted_at`.
//! `headcount_in_use` is the number of history entries whose `closedAt` is null. Deterministic
//! failures: `unknown_position` (any event but `position.created` for a position never created),
//! `position_deleted` (`position.updated` or `assignment.filled` on a deleted position; a close is
//! still recorded), `unknown_assignment` (`assignment.closed` for an id not in the history).
//!
//! Invalidation: after every change the plugin runs `pg_notify('query_cache_invalidate',
//! '<tenantId>:<positionCode>')` in the batch's transaction. Postgres delivers it only if the
//! transaction commits (and drops it with the event's savepoint if the event fails), and once per
//! key per transaction.
//!
//! Database errors map to outcomes as the SDK maps them (`projector_plugin_sdk::sql`:
//! serialization failures and deadlocks, timeouts, connection errors transient; permission and
//! other errors deterministic), data exceptions (SQLSTATE class 22: a malformed timestamp, an
//! out-of-range number) included, which are the payload's fault: `bad_payload`.

use projector_plugin_sdk::log::{log, Level};
use projector_plugin_sdk::sql::{self, execute};
use projector_plugin_sdk::{deterministic, reason, success, Event, Guest, Outcome, PluginInfo};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The channel API caches listen on.
const CHANNEL: &str = "query_cache_invalidate";

/// The position's row, locked for the rest of the event's transaction. `at` is the event's
/// `occurredAt` as Postgres normalises it (RFC 3339 UTC).
const CURRENT: &str = "\
SELECT last_event_seq, deleted_at IS NOT NULL AS deleted, assignment_history,
       $3::timestamptz AS at
FROM position_cache WHERE tenant_id = $1 AND position_code = $2
FOR UPDATE";

const CREATE: &str = "\
INSERT INTO position_cache AS p (tenant_id, position_code, title, job_level_code, job_level_version,
                                 headcount_capacity, last_event_seq, last_occurred_at, last_request_id)
VALUES ($1, $2, $3, $4,
        (SELECT version FROM job_level_cache WHERE tenant_id = $1 AND job_level_code = $4),
        $5::int, $6, $7::timestamptz, $8)
ON CONFLICT (tenant_id, position_code) DO UPDATE SET
    title = EXCLUDED.title, job_level_code = EXCLUDED.job_level_code,
    job_level_version = EXCLUDED.job_level_version, headcount_capacity = EXCLUDED.headcount_capacity,
    deleted_at = NULL, last_event_seq = EXCLUDED.last_event_seq,
    last_occurred_at = EXCLUDED.last_occurred_at, last_request_id = EXCLUDED.last_request_id,
    updated_at = now()
WHERE p.last_event_seq < EXCLUDED.last_event_seq";

/// NULL parameters leave a field as it is; a new job level brings its newest known version.
const UPDATE: &str = "\
UPDATE position_cache SET
    title = coalesce($3, title),
    job_level_code = coalesce($4, job_level_code),
    job_level_version = CASE WHEN $4 IS NULL OR $4 = job_level_code THEN job_level_version
        ELSE (SELECT version FROM job_level_cache j WHERE j.tenant_id = $1 AND j.job_level_code = $4)
    END,
    headcount_capacity = coalesce($5::int, headcount_capacity),
    last_event_seq = $6, last_occurred_at = $7::timestamptz, last_request_id = $8, updated_at = now()
WHERE tenant_id = $1 AND position_code = $2 AND last_event_seq < $6";

const DELETE: &str = "\
UPDATE position_cache SET
    deleted_at = $3::timestamptz,
    last_event_seq = $4, last_occurred_at = $3::timestamptz, last_request_id = $5, updated_at = now()
WHERE tenant_id = $1 AND position_code = $2 AND last_event_seq < $4";

const WRITE_HISTORY: &str = "\
UPDATE position_cache SET
    assignment_history = $3, headcount_in_use = $4::int,
    last_event_seq = $5, last_occurred_at = $6::timestamptz, last_request_id = $7, updated_at = now()
WHERE tenant_id = $1 AND position_code = $2 AND last_event_seq < $5";

const LOCK_JOB_LEVEL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const UPSERT_JOB_LEVEL: &str = "\
INSERT INTO job_level_cache AS j (tenant_id, job_level_code, version, last_event_seq)
VALUES ($1, $2, $3::int, $4)
ON CONFLICT (tenant_id, job_level_code) DO UPDATE SET
    version = EXCLUDED.version, last_event_seq = EXCLUDED.last_event_seq, updated_at = now()
WHERE j.version < EXCLUDED.version";

/// Moves every position of the job level to the new version and notifies each one changed.
const BUMP_POSITIONS: &str = "\
WITH changed AS (
    UPDATE position_cache SET job_level_version = $3::int, updated_at = now()
    WHERE tenant_id = $1 AND job_level_code = $2
      AND (job_level_version IS NULL OR job_level_version < $3::int)
    RETURNING position_code
)
SELECT pg_notify($4, $1 || ':' || position_code) FROM changed";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// A nullable number travels as text (cast in SQL): the host caches a statement's parameter
/// types from its first use, where a JSON null binds as text, so every parameter of a statement
/// keeps one JSON type across calls.
fn nullable_int(n: Option<i64>) -> Option<String> {
    n.map(|n| n.to_string())
}

/// An event's processing either runs to its end or stops early with an outcome.
type Step<T> = Result<T, Outcome>;

/// Reads a payload's fields, collecting every problem so `bad_payload` names them all.
struct Payload {
    fields: Map<String, Value>,
    problems: Vec<String>,
}

impl Payload {
    fn parse(text: &str) -> Step<Payload> {
        match serde_json::from_str(text) {
            Ok(Value::Object(fields)) => Ok(Payload {
                fields,
                problems: Vec::new(),
            }),
            _ => Err(deterministic(
                reason::BAD_PAYLOAD,
                "payload is not a JSON object",
            )),
        }
    }

    fn opt_text(&mut self, key: &str) -> Option<String> {
        match self.fields.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                self.problems
                    .push(format!("{key} is not a non-empty string"));
                None
            }
        }
    }

    fn text(&mut self, key: &str) -> String {
        if self.fields.get(key).is_none_or(Value::is_null) {
            self.problems.push(format!("missing {key}"));
            return String::new();
        }
        self.opt_text(key).unwrap_or_default()
    }

    fn opt_int(&mut self, key: &str, min: i64) -> Option<i64> {
        match self.fields.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64().filter(|n| *n >= min) {
                Some(n) => Some(n),
                None => {
                    self.problems
                        .push(format!("{key} is not an integer >= {min}"));
                    None
                }
            },
        }
    }

    fn int(&mut self, key: &str, min: i64) -> i64 {
        if self.fields.get(key).is_none_or(Value::is_null) {
            self.problems.push(format!("missing {key}"));
            return 0;
        }
        self.opt_int(key, min).unwrap_or(0)
    }

    fn finish(self) -> Step<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(deterministic(reason::BAD_PAYLOAD, self.problems.join("; ")))
        }
    }
}

/// What a position or assignment event does to its position.
enum Change {
    Created {
        title: String,
        job_level: Option<String>,
        headcount: Option<i64>,
    },
    Updated {
        title: Option<String>,
        job_level: Option<String>,
        headcount: Option<i64>,
    },
    Deleted,
    Filled {
        assignment: String,
        employee: String,
    },
    Closed {
        assignment: String,
    },
}

/// The position an event is about, and the envelope fields the row keeps.
struct Target<'a> {
    event: &'a Event,
    tenant: String,
    code: String,
    occurred_at: String,
    request_id: Option<String>,
}

/// The locked row of a position that exists ([`CURRENT`]'s columns).
#[derive(Deserialize)]
struct Current {
    last_event_seq: i64,
    deleted: bool,
    #[serde(rename = "assignment_history")]
    history: Vec<Value>,
    /// The event's occurredAt, normalised by Postgres.
    at: String,
}

fn project(event: &Event) -> Outcome {
    match apply(event) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

fn apply(event: &Event) -> Step<Outcome> {
    let mut p = Payload::parse(&event.payload)?;
    let tenant = p.text("tenantId");
    let occurred_at = p.text("occurredAt");
    let request_id = p.opt_text("requestId");
    let change = match event.event_type.as_str() {
        "jobLevel.versionCreated" => {
            let job_level = p.text("jobLevelCode");
            let version = p.int("version", 1);
            p.finish()?;
            return new_job_level_version(event, &tenant, &job_level, version);
        }
        "position.created" => Change::Created {
            title: p.text("title"),
            job_level: p.opt_text("jobLevelCode"),
            headcount: p.opt_int("headcount", 0),
        },
        "position.updated" => {
            let (title, job_level) = (p.opt_text("title"), p.opt_text("jobLevelCode"));
            let headcount = p.opt_int("headcount", 0);
            if ["title", "jobLevelCode", "headcount"]
                .iter()
                .all(|k| p.fields.get(*k).is_none_or(Value::is_null))
            {
                p.problems
                    .push("nothing to update (title, jobLevelCode, headcount)".into());
            }
            Change::Updated {
                title,
                job_level,
                headcount,
            }
        }
        "position.deleted" => Change::Deleted,
        "assignment.filled" => Change::Filled {
            assignment: p.text("assignmentId"),
            employee: p.text("employeeId"),
        },
        "assignment.closed" => Change::Closed {
            assignment: p.text("assignmentId"),
        },
        other => {
            return Err(deterministic(
                "unknown_event_type",
                format!("query-cache does not handle `{other}`"),
            ))
        }
    };
    let code = p.text("positionCode");
    p.finish()?;
    let target = Target {
        event,
        tenant,
        code,
        occurred_at,
        request_id,
    };
    apply_change(&target, change)
}

fn lock_job_level(tenant: &str, job_level: &str) -> Step<()> {
    let key = format!("query-cache/job-level/{tenant}/{job_level}");
    execute(LOCK_JOB_LEVEL, &(key,))?;
    Ok(())
}

fn current(t: &Target) -> Step<Option<Current>> {
    let rows = sql::query(CURRENT, &json!([t.tenant, t.code, t.occurred_at]))?;
    Ok(rows.into_iter().next())
}

fn apply_change(t: &Target, change: Change) -> Step<Outcome> {
    let seq = t.event.seq;
    let found = current(t)?;
    if let Some(row) = &found {
        if seq <= row.last_event_seq {
            log(
                Level::Debug,
                Some(&t.event.id),
                &format!(
                    "already applied: seq {seq} <= last_event_seq {}",
                    row.last_event_seq
                ),
            );
            return Ok(success());
        }
    }
    let unknown = || {
        deterministic(
            "unknown_position",
            format!("position {}:{} was never created", t.tenant, t.code),
        )
    };
    let deleted = || {
        deterministic(
            "position_deleted",
            format!("position {}:{} is deleted", t.tenant, t.code),
        )
    };
    let changed = match change {
        Change::Created {
            title,
            job_level,
            headcount,
        } => {
            if let Some(level) = &job_level {
                lock_job_level(&t.tenant, level)?;
            }
            execute(
                CREATE,
                &json!([
                    t.tenant,
                    t.code,
                    title,
                    job_level,
                    nullable_int(headcount),
                    seq,
                    t.occurred_at,
                    t.request_id
                ]),
            )?
        }
        Change::Updated {
            title,
            job_level,
            headcount,
        } => {
            let row = found.ok_or_else(unknown)?;
            if row.deleted {
                return Err(deleted());
            }
            if let Some(level) = &job_level {
                lock_job_level(&t.tenant, level)?;
            }
            execute(
                UPDATE,
                &json!([
                    t.tenant,
                    t.code,
                    title,
                    job_level,
                    nullable_int(headcount),
                    seq,
                    t.occurred_at,
                    t.request_id
                ]),
            )?
        }
        Change::Deleted => {
            if found.ok_or_else(unknown)?.deleted {
                return Ok(success());
            }
            execute(
                DELETE,
                &json!([t.tenant, t.code, t.occurred_at, seq, t.request_id]),
            )?
        }
        Change::Filled {
            assignment,
            employee,
        } => {
            let mut row = found.ok_or_else(unknown)?;
            if row.deleted {
                return Err(deleted());
            }
            if row.history.iter().any(|e| e["assignmentId"] == *assignment) {
                return Ok(success());
            }
            row.history.push(json!({
                "assignmentId": assignment,
                "employeeId": employee,
                "filledAt": row.at,
                "closedAt": null,
            }));
            write_history(t, &row)?
        }
        Change::Closed { assignment } => {
            let mut row = found.ok_or_else(unknown)?;
            let at = row.at.clone();
            let Some(entry) = row
                .history
                .iter_mut()
                .find(|e| e["assignmentId"] == *assignment)
            else {
                return Err(deterministic(
                    "unknown_assignment",
                    format!(
                        "assignment {assignment} was never filled on position {}:{}",
                        t.tenant, t.code
                    ),
                ));
            };
            if !entry["closedAt"].is_null() {
                return Ok(success());
            }
            entry["closedAt"] = json!(at);
            write_history(t, &row)?
        }
    };
    if changed > 0 {
        execute(
            NOTIFY,
            &json!([CHANNEL, format!("{}:{}", t.tenant, t.code)]),
        )?;
    }
    Ok(success())
}

fn write_history(t: &Target, row: &Current) -> Step<u64> {
    let in_use = row
        .history
        .iter()
        .filter(|e| e["closedAt"].is_null())
        .count();
    let written = execute(
        WRITE_HISTORY,
        &json!([
            t.tenant,
            t.code,
            row.history,
            in_use,
            t.event.seq,
            t.occurred_at,
            t.request_id
        ]),
    )?;
    Ok(written)
}

fn new_job_level_version(
    event: &Event,
    tenant: &str,
    job_level: &str,
    version: i64,
) -> Step<Outcome> {
    lock_job_level(tenant, job_level)?;
    execute(
        UPSERT_JOB_LEVEL,
        &json!([tenant, job_level, version, event.seq]),
    )?;
    let positions = execute(
        BUMP_POSITIONS,
        &json!([tenant, job_level, version, CHANNEL]),
    )?;
    log(
        Level::Debug,
        Some(&event.id),
        &format!("job level {tenant}:{job_level} version {version}: {positions} positions changed"),
    );
    Ok(success())
}

impl Guest for QueryCache {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "query-cache".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec![
                "position.*".into(),
                "assignment.*".into(),
                "jobLevel.*".into(),
            ],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events.iter().map(project).collect()
    }
}

struct QueryCache;

projector_plugin_sdk::export!(QueryCache);
