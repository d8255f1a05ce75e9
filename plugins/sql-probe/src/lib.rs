//! `sql-probe`: a test plugin for the `sql` capability. Each event's payload scripts what to do:
//!
//! ```json
//! {"statements": [{"sql": "INSERT INTO t VALUES ($1)", "params": [1]}],
//!  "sleep_ms": 0, "sleep_on_attempt": 1, "outcome": "success"}
//! ```
//!
//! With `"ignore_errors": true` a failed statement is ignored and the scripted outcome answered
//! anyway (a plugin trying to swallow what the host refused).
//! A statement with `"query": true` runs through `sql.query` (its rows are counted and logged)
//! instead of `sql.execute`. `sleep_before_ms` sleeps before the first statement.
//!
//! Statements run in order; the first that fails ends the event with a deterministic failure
//! whose reason is `sql_<kind>` (`sql_permission_denied`, `sql_unique_violation`, ...) and whose
//! message is the server's. Otherwise the plugin sleeps `sleep_ms` (only on attempt
//! `sleep_on_attempt` when given) and answers `outcome` (`success`, `transient`,
//! `deterministic`; default `success`), so tests can show that a non-success outcome rolls the
//! event's writes back and that a crash before commit leaves nothing behind.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sql-plugin",
});

use exports::projector::plugin::projection::{Event, Guest, Outcome, PluginInfo};
use projector::plugin::log::{log, Level};
use projector::plugin::sql::{execute, query, ErrorKind};
use projector::plugin::types::Failure;
use serde_json::Value;

struct SqlProbe;

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::UniqueViolation => "unique_violation",
        ErrorKind::SerializationFailure => "serialization_failure",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connection => "connection",
        ErrorKind::Other => "other",
    }
}

fn run(event: &Event) -> Outcome {
    let script: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    let empty = Vec::new();
    let statements = script
        .get("statements")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if let Some(ms) = script.get("sleep_before_ms").and_then(Value::as_u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    for (i, statement) in statements.iter().enumerate() {
        let sql = statement.get("sql").and_then(Value::as_str).unwrap_or("");
        let params = statement
            .get("params")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let result = if statement.get("query").and_then(Value::as_bool) == Some(true) {
            query(sql, &params.to_string()).map(|rows| {
                let n = serde_json::from_str::<Value>(&rows)
                    .ok()
                    .and_then(|v| v.as_array().map(Vec::len))
                    .unwrap_or(0);
                log(Level::Info, Some(&event.id), &format!("statement {i}: {n} rows"));
            })
        } else {
            execute(sql, &params.to_string()).map(drop)
        };
        if script.get("ignore_errors").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Err(e) = result {
            return Outcome::Deterministic(Failure {
                reason: format!("sql_{}", kind_name(e.kind)),
                message: format!("statement {i}: {} ({})", e.message, e.code),
            });
        }
    }
    let sleep_on = script.get("sleep_on_attempt").and_then(Value::as_u64);
    if let Some(ms) = script.get("sleep_ms").and_then(Value::as_u64) {
        if sleep_on.is_none_or(|a| a == u64::from(event.attempt)) {
            log(Level::Info, Some(&event.id), &format!("sleeping {ms} ms"));
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    let failure = |reason: &str| Failure {
        reason: reason.into(),
        message: "scripted".into(),
    };
    match script
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("success")
    {
        "transient" => Outcome::Transient(failure("scripted_transient")),
        "deterministic" => Outcome::Deterministic(failure("scripted_deterministic")),
        _ => Outcome::Success,
    }
}

impl Guest for SqlProbe {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "sql-probe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events.iter().map(run).collect()
    }
}

export!(SqlProbe);
