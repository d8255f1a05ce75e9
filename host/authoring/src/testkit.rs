//! The plugin test kit (`projector plugin test`): runs a plugin component over a file of events
//! without Postgres or a search cluster.
//!
//! Invariants:
//! - It is the real runtime with the outside world swapped out: the component is loaded and
//!   validated by [`Runtime`] as `projector run` would (same limits, same bisection on traps,
//!   same reason sanitising); only `log`, `sql` and `search` go to the in-memory backends below
//!   (see [`projector_runtime::Backends`]), which record every call.
//! - The stand-ins are not the sinks: the `sql` stand-in has no tables (`execute` answers 1 row
//!   affected, `query` no rows) and the `search` stand-in is a map of documents with external
//!   versions. What they prove is what the plugin *asks for* and how it classifies answers.
//!   With a database ([`Options::database_url`], see [`crate::database`]) `sql` statements run on
//!   a real Postgres instead, in one transaction rolled back at the end.
//! - Redelivery ([`Options::deliver_twice`]): after the file, every event that succeeded is
//!   delivered again (same id and seq, the next attempt), one call each, as a lease expiry, a
//!   replay or a rebuild over the live model would. A redelivery that changes what the sink
//!   holds (the search documents; with a database, the rows of the `--sql-table` tables) is a
//!   finding: the plugin is not idempotent, and the run fails.
//! - One event per `handle()` call, so every recorded call belongs to one event; an event whose
//!   outcome is not `success` has its `sql` calls marked rolled back, as the host's savepoint
//!   would.
//! - Deterministic output for deterministic plugins: event defaults are fixed, nothing depends on
//!   the clock, so an expectation file can pin calls as well as outcomes.

use crate::database::{self, Contents, Database};
use crate::search_stand_in::{apply, render_operation, Documents};
use crate::Error;
use projector_core::outbox::{Claim, ClaimedEvent, Verdict};
use projector_core::spec::{Grants, Ordering, ProjectionSpec, Tuning};
use projector_runtime::capability::BatchScope;
use projector_runtime::log::{Level, LogBackend};
use projector_runtime::search::{
    validate as validate_search, BulkError, ItemResult, Operation, SearchBackend,
};
use projector_runtime::sql::{ErrorKind as SqlErrorKind, SqlBackend, SqlError};
use projector_runtime::Backends;
use projector_runtime::{limits, Handler, Runtime};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `occurred_at` of an event whose line does not set one.
pub const DEFAULT_OCCURRED_AT: &str = "2025-01-01T00:00:00.000000Z";

/// How long one `handle()` call may run, as `OUTBOX_MAX_PROCESSING_SECONDS`' default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// One line of an events file (JSON Lines). Only `event_type` and `payload` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    id: Option<Uuid>,
    seq: Option<i64>,
    event_type: String,
    #[serde(default)]
    aggregate_type: String,
    #[serde(default)]
    aggregate_id: String,
    /// A JSON value (sent as its JSON text) or a string (sent as is, to test non-JSON payloads).
    payload: Value,
    occurred_at: Option<String>,
    attempt: Option<i32>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// Reads an events file: one JSON object per non-blank line. Errors name the file and line.
pub fn read_events(path: &Path) -> Result<Vec<ClaimedEvent>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config("--events", format!("{}: cannot read: {e}", path.display())))?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let bad = |m: String| Error::config("--events", format!("{}:{n}: {m}", path.display()));
        let e: EventLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let payload = match e.payload {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let attempt = e.attempt.unwrap_or(1);
        if attempt < 1 {
            return Err(bad(format!("`attempt` must be at least 1, got {attempt}")));
        }
        events.push(ClaimedEvent {
            seq: e.seq.unwrap_or(events.len() as i64 + 1),
            id: e.id.unwrap_or_else(|| line_id(events.len() + 1)),
            event_type: e.event_type,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            payload,
            headers: e.headers,
            occurred_at: e
                .occurred_at
                .unwrap_or_else(|| DEFAULT_OCCURRED_AT.to_owned()),
            attempt,
            reclaimed: false,
            too_large: None,
        });
    }
    if events.is_empty() {
        return Err(Error::config(
            "--events",
            format!("{}: no events (one JSON object per line)", path.display()),
        ));
    }
    Ok(events)
}

/// The id of the `n`th event when its line gives none: `00000000-0000-4000-8000-<n>`.
fn line_id(n: usize) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{n:012}")).expect("a valid uuid")
}

/// One capability call the plugin made, rendered as one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `log warn [event …] text`, `sql.execute "…" [params] -> 1`, `search.bulk …`.
    pub text: String,
    /// A `sql` call of an event whose outcome was not success: the host would roll it back.
    pub rolled_back: bool,
}

/// What happened to one event.
#[derive(Debug, Clone)]
pub struct EventResult {
    /// The event as the plugin saw it.
    pub event: ClaimedEvent,
    /// The outcome, as the host would record it.
    pub verdict: Verdict,
    /// The capability calls made while handling it, in order.
    pub calls: Vec<Call>,
    /// 1 for the delivery from the file, 2 for its redelivery ([`Options::deliver_twice`]).
    pub delivery: u32,
}

/// How `projector plugin test` runs beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Run `sql` statements on this Postgres (see [`crate::database`]) instead of the stand-in.
    pub database_url: Option<String>,
    /// Tables to read back (with a database): compared around every redelivery and printed
    /// after the run.
    pub sql_tables: Vec<String>,
    /// Deliver every event that succeeded a second time, after the file, and fail the run when a
    /// second delivery changes the sink.
    pub deliver_twice: bool,
}

/// A test-kit run.
#[derive(Debug)]
pub struct Run {
    /// `describe()`'s `name@version+sha256:…`.
    pub plugin: String,
    /// One per event, in file order.
    pub results: Vec<EventResult>,
    /// Time spent in `handle()` calls (including the stand-ins), summed over events.
    pub handle_time: Duration,
    /// Redeliveries that changed the sink: the event, then one line per changed row or document.
    pub findings: Vec<(usize, Vec<String>)>,
    /// What the `--sql-table` tables held at the end (with a database).
    pub tables: Option<Contents>,
    /// Whether redeliveries' `sql` effects went unchecked (no database).
    pub sql_unchecked: bool,
}

/// The stand-ins' shared state: the calls recorded so far and the search documents.
#[derive(Default)]
struct Recorder {
    calls: Vec<(Call, bool)>,
    documents: Documents,
}

/// The in-memory capabilities. Clearly not the runtime: see the module doc.
#[derive(Default)]
struct TestKitStandIn {
    state: Mutex<Recorder>,
    /// Where `sql` goes when the run has a database.
    database: Option<Database>,
}

impl TestKitStandIn {
    fn record(&self, text: String, is_sql: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls.push((
            Call {
                text,
                rolled_back: false,
            },
            is_sql,
        ));
    }

    fn take(&self) -> Vec<(Call, bool)> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).calls)
    }
}

/// A statement on one line, whitespace collapsed.
fn one_line(statement: &str) -> String {
    statement.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The sql capability's parameter rule: a JSON array (or nothing).
fn check_params(params: &str) -> Result<String, SqlError> {
    let other = |message: String| SqlError {
        kind: SqlErrorKind::Other,
        code: String::new(),
        message,
    };
    if params.trim().is_empty() {
        return Ok("[]".into());
    }
    match serde_json::from_str::<Value>(params) {
        Ok(v @ Value::Array(_)) => Ok(v.to_string()),
        Ok(_) => Err(other("params must be a JSON array".into())),
        Err(e) => Err(other(format!("params are not JSON: {e}"))),
    }
}

impl LogBackend for TestKitStandIn {
    fn log(&self, _: &BatchScope, level: Level, event_id: Option<&str>, message: &str) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let about = event_id
            .map(|id| format!(" [event {id}]"))
            .unwrap_or_default();
        self.record(format!("log {level}{about} {message}"), false);
    }
}

impl SqlBackend for TestKitStandIn {
    fn query(&self, _: &BatchScope, statement: &str, params: &str) -> Result<String, SqlError> {
        let result = check_params(params);
        let (shown, answer) = match (&result, &self.database) {
            (Ok(p), Some(db)) => (p.clone(), db.query(statement, p)),
            (Ok(p), None) => (p.clone(), Ok("[]".to_owned())),
            (Err(e), _) => (params.to_owned(), Err(e.clone())),
        };
        let outcome = match &answer {
            Ok(rows) => rows.clone(),
            Err(e) => format!("error {:?}: {}", e.kind, e.message),
        };
        self.record(
            format!("sql.query \"{}\" {shown} -> {outcome}", one_line(statement)),
            true,
        );
        answer
    }

    fn execute(&self, _: &BatchScope, statement: &str, params: &str) -> Result<u64, SqlError> {
        let (shown, answer) = match (check_params(params), &self.database) {
            (Ok(p), Some(db)) => {
                let answer = db.execute(statement, &p);
                (p, answer)
            }
            (Ok(p), None) => (p, Ok(1)),
            (Err(e), _) => (params.to_owned(), Err(e)),
        };
        let outcome = match &answer {
            Ok(n) => n.to_string(),
            Err(e) => format!("error {:?}: {}", e.kind, e.message),
        };
        self.record(
            format!(
                "sql.execute \"{}\" {shown} -> {outcome}",
                one_line(statement)
            ),
            true,
        );
        answer
    }
}

impl SearchBackend for TestKitStandIn {
    fn bulk(&self, _: &BatchScope, operations: &[Operation]) -> Result<Vec<ItemResult>, BulkError> {
        let ops: Vec<String> = operations.iter().map(render_operation).collect();
        let grants = Grants {
            search_indices: vec!["*".into()],
            ..Grants::default()
        };
        let answer = validate_search(operations, &grants, "test").map(|()| {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            operations
                .iter()
                .map(|op| apply(&mut state.documents, op))
                .collect::<Vec<_>>()
        });
        let outcome = match &answer {
            Ok(items) => items
                .iter()
                .map(|i| match i.error_type.as_str() {
                    "" => i.status.to_string(),
                    t => format!("{} {t}", i.status),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("error {e:?}"),
        };
        self.record(
            format!("search.bulk [{}] -> [{outcome}]", ops.join("; ")),
            false,
        );
        answer
    }
}

/// Loads `plugin` with the stand-ins and runs it over `events`, one event per call.
pub fn run(
    plugin: &Path,
    events: Vec<ClaimedEvent>,
    config: BTreeMap<String, String>,
    projection: &str,
) -> Result<Run, Error> {
    run_with(plugin, events, config, projection, &Options::default())
}

/// [`run`] with a database and/or redeliveries (see [`Options`]).
pub fn run_with(
    plugin: &Path,
    events: Vec<ClaimedEvent>,
    config: BTreeMap<String, String>,
    projection: &str,
    options: &Options,
) -> Result<Run, Error> {
    let bytes = std::fs::read(plugin).map_err(|e| Error::Plugin {
        path: plugin.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    let database = match &options.database_url {
        Some(url) => Some(Database::open(url, options.sql_tables.clone())?),
        None => None,
    };
    let runtime =
        Runtime::new().map_err(|e| anyhow::anyhow!("starting the WebAssembly runtime: {e:#}"))?;
    let spec = test_spec(projection, plugin, config);
    let stand_in = Arc::new(TestKitStandIn {
        database,
        ..TestKitStandIn::default()
    });
    let loaded = runtime
        .load_with_backends(
            &spec,
            &bytes,
            plugin,
            Backends {
                log: stand_in.clone(),
                sql: stand_in.clone(),
                search: stand_in.clone(),
            },
        )
        .map_err(|e| match e {
            // wasmtime's messages may span lines (a hex dump); a usage error is one line.
            Error::Plugin { path, message } => Error::Plugin {
                path,
                message: one_line(&message),
            },
            other => other,
        })?;
    stand_in.take(); // anything logged while loading belongs to no event
    let label = loaded.version_label.clone();
    let mut kit = Deliverer {
        handler: Handler::new(loaded),
        stand_in: &stand_in,
        projection,
        handle_time: Duration::ZERO,
    };
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        results.push(kit.deliver(event, 1)?.0);
    }
    let mut findings = Vec::new();
    let mut sql_unchecked = false;
    if options.deliver_twice {
        let first: Vec<ClaimedEvent> = results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Success))
            .map(|r| r.event.clone())
            .collect();
        for mut event in first {
            let n = results
                .iter()
                .position(|r| r.event.id == event.id)
                .map_or(0, |i| i + 1);
            event.attempt += 1;
            let (result, changed) = kit.deliver(event, 2)?;
            sql_unchecked |= stand_in.database.is_none()
                && result.calls.iter().any(|c| c.text.starts_with("sql."));
            if !changed.is_empty() {
                findings.push((n, changed));
            }
            results.push(result);
        }
    }
    let handle_time = kit.handle_time;
    let tables = match &stand_in.database {
        Some(db) => Some(db.contents()?),
        None => None,
    };
    if let Some(db) = Arc::into_inner(stand_in).and_then(|s| s.database) {
        db.finish();
    }
    Ok(Run {
        plugin: label,
        results,
        handle_time,
        findings,
        tables,
        sql_unchecked,
    })
}

/// Delivers events to one plugin instance, one per call, each (with a database) under its own
/// savepoint.
struct Deliverer<'a> {
    handler: Handler,
    stand_in: &'a TestKitStandIn,
    projection: &'a str,
    handle_time: Duration,
}

impl Deliverer<'_> {
    /// Delivers `event` and returns what happened, and (for a redelivery) how the sink changed.
    fn deliver(
        &mut self,
        event: ClaimedEvent,
        delivery: u32,
    ) -> Result<(EventResult, Vec<String>), Error> {
        let db = self.stand_in.database.as_ref();
        let documents = || {
            let state = self
                .stand_in
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            state.documents.clone()
        };
        let before = match (delivery, db) {
            (1, _) => None,
            (_, Some(db)) => Some((documents(), Some(db.contents()?))),
            (_, None) => Some((documents(), None)),
        };
        if let Some(db) = db {
            db.begin_delivery()?;
        }
        let claim = Claim {
            batch_id: Uuid::new_v4(),
            projection: self.projection.to_owned(),
            events: vec![event.clone()],
        };
        let started = Instant::now();
        let (mut verdicts, _report) = self.handler.handle(&claim, DEFAULT_DEADLINE);
        self.handle_time += started.elapsed();
        let mut verdict = verdicts.pop().expect("one verdict per event");
        if let Some(db) = db {
            if let Some(message) = db.refusal() {
                verdict = Verdict::Deterministic {
                    reason: "sql_forbidden_statement".into(),
                    message,
                };
            }
            let success = matches!(verdict, Verdict::Success);
            if success && !db.end_delivery(true)? {
                verdict = Verdict::transient(
                    "sql_aborted",
                    "the plugin answered success but a statement of this event failed; its writes were rolled back",
                );
            } else if !success {
                db.end_delivery(false)?;
            }
        }
        let failed = !matches!(verdict, Verdict::Success);
        let calls = self
            .stand_in
            .take()
            .into_iter()
            .map(|(mut call, is_sql)| {
                call.rolled_back = is_sql && failed;
                call
            })
            .collect();
        let mut changed = Vec::new();
        if let Some((docs, tables)) = before {
            let after = documents();
            let mut keys: Vec<_> = docs.keys().chain(after.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                if docs.get(key) != after.get(key) {
                    changed.push(format!("search document {}/{} changed", key.0, key.1));
                }
            }
            if let (Some(tables), Some(db)) = (tables, db) {
                changed.extend(database::changes(&tables, &db.contents()?));
            }
        }
        Ok((
            EventResult {
                event,
                verdict,
                calls,
                delivery,
            },
            changed,
        ))
    }
}

/// A projection that grants every capability: the stand-ins answer them all.
fn test_spec(projection: &str, plugin: &Path, config: BTreeMap<String, String>) -> ProjectionSpec {
    ProjectionSpec {
        name: projection.to_owned(),
        plugin: PathBuf::from(plugin),
        ordering: Ordering::Aggregate,
        tuning: Tuning {
            concurrency: 1,
            batch_size: 1,
            events_per_aggregate: 1,
            lease: DEFAULT_DEADLINE,
            max_processing: DEFAULT_DEADLINE,
            max_attempts: 1,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            max_payload_bytes: usize::MAX,
            batch_max_bytes: usize::MAX,
            unknown_event_types: Default::default(),
        },
        config,
        grants: Grants {
            search_indices: vec!["*".into()],
            sql_tables: vec!["(test kit)".into()],
            ..Grants::default()
        },
        memory_limit: limits::DEFAULT_MEMORY_BYTES,
        sources: BTreeMap::new(),
    }
}

/// `success`, `transient REASON: MESSAGE` or `deterministic REASON: MESSAGE`.
pub fn render_verdict(v: &Verdict, with_message: bool) -> String {
    let (kind, reason, message) = match v {
        Verdict::Success => return "success".into(),
        Verdict::Deferred => return "deferred".into(),
        Verdict::Transient { reason, message } => ("transient", reason, message),
        Verdict::Deterministic { reason, message } => ("deterministic", reason, message),
    };
    if with_message {
        format!("{kind} {reason}: {message}")
    } else {
        format!("{kind} {reason}")
    }
}

impl Run {
    /// The number the transcript gives result `i`: its event's line in the events file (a
    /// redelivery has the number of the event it repeats).
    pub fn position(&self, i: usize) -> usize {
        let r = &self.results[i];
        if r.delivery == 1 {
            return i + 1;
        }
        self.results
            .iter()
            .position(|o| o.delivery == 1 && o.event.id == r.event.id)
            .map_or(i + 1, |p| p + 1)
    }

    /// The human-readable transcript: a banner saying this is the test kit, then per event its
    /// outcome and recorded calls, then a summary.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        out.push_str(if self.tables.is_some() {
            "projector plugin test: TEST KIT run with in-memory stand-ins for log and search, \
             sql on PostgreSQL in one transaction rolled back at the end (not the projector \
             runtime's sinks, roles or grants)\n"
        } else {
            "projector plugin test: TEST KIT run with in-memory stand-ins for log, sql and search \
             (no Postgres, no search cluster; not the projector runtime's sinks)\n"
        });
        out.push_str(&format!("plugin {}\n", self.plugin));
        let (mut ok, mut transient, mut deterministic) = (0, 0, 0);
        for (i, r) in self.results.iter().enumerate() {
            match r.verdict {
                Verdict::Success => ok += 1,
                Verdict::Transient { .. } => transient += 1,
                Verdict::Deterministic { .. } => deterministic += 1,
                Verdict::Deferred => {}
            }
            let again = if r.delivery > 1 {
                format!(" again (attempt {})", r.event.attempt)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "event {}{again} {} {}: {}\n",
                self.position(i),
                r.event.id,
                r.event.event_type,
                render_verdict(&r.verdict, true)
            ));
            for call in &r.calls {
                let note = if call.rolled_back {
                    "  (rolled back: the outcome is not success)"
                } else {
                    ""
                };
                out.push_str(&format!("  call {}{note}\n", call.text));
            }
        }
        if let Some(tables) = &self.tables {
            for (table, rows) in tables {
                out.push_str(&format!(
                    "table {table} after the run ({} rows; rolled back):\n",
                    rows.len()
                ));
                for row in rows {
                    out.push_str(&format!("  {row}\n"));
                }
            }
        }
        if self.sql_unchecked {
            out.push_str(
                "note: the sql stand-in keeps no rows, so what redeliveries wrote was not \
                 compared; run with --database-url URL --sql-table TABLE to check it\n",
            );
        }
        for (n, changed) in &self.findings {
            out.push_str(&format!(
                "NOT IDEMPOTENT: delivering event {n} again changed the sink:\n"
            ));
            for line in changed {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let n = self.results.len().max(1) as f64;
        let again = self.results.iter().filter(|r| r.delivery > 1).count();
        let deliveries = match again {
            0 => format!("{} events", self.results.len()),
            _ => format!(
                "{} events and {again} delivered again",
                self.results.len() - again
            ),
        };
        out.push_str(&format!(
            "{deliveries}: {ok} success, {transient} transient, {deterministic} deterministic; \
             handle() {:.1} µs per delivery\n",
            self.handle_time.as_secs_f64() * 1e6 / n
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_lines_default_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(
            &path,
            "{\"event_type\": \"a.b\", \"payload\": {\"x\": 1}}\n\n{\"event_type\": \"a.c\", \"payload\": \"raw\", \"seq\": 9}\n",
        )
        .unwrap();
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].id.to_string(),
            "00000000-0000-4000-8000-000000000001"
        );
        assert_eq!(events[0].payload, r#"{"x":1}"#);
        assert_eq!((events[1].seq, events[1].payload.as_str()), (9, "raw"));
        std::fs::write(
            &path,
            "{\"event_type\": \"a.b\", \"payload\": 1}\n{\"evnt_type\": 1}\n",
        )
        .unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("--events: ") && err.contains("e.jsonl:2: unknown field `evnt_type`"),
            "{err}"
        );
    }
}
