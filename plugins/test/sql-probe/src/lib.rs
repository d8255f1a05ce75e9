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
//! whose reason is `sql_<kind>` (`sql_permission_denied`, `sql_unique_violation`, ...: the kind
//! as the host reported it, not the SDK's mapping to an outcome, which is what a probe is for)
//! and whose message is the server's. Otherwise the plugin sleeps `sleep_ms` (only on attempt
//! `sleep_on_attempt` when given) and answers `outcome` (`success`, `transient`,
//! `deterministic`; default `success`), so tests can show that a non-success outcome rolls the
//! event's writes back and that a crash before commit leaves nothing behind.

use projector_plugin_sdk::log::{log, Level};
use projector_plugin_sdk::{deterministic, sql, success, transient};
use projector_plugin_sdk::{Event, Guest, Outcome, PluginInfo};
use serde_json::Value;

struct SqlProbe;

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
        let statement_text = statement.get("sql").and_then(Value::as_str).unwrap_or("");
        let params = statement
            .get("params")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let result = if statement.get("query").and_then(Value::as_bool) == Some(true) {
            sql::query::<Value>(statement_text, &params).map(|rows| {
                let n = rows.len();
                log(
                    Level::Info,
                    Some(&event.id),
                    &format!("statement {i}: {n} rows"),
                );
            })
        } else {
            sql::execute(statement_text, &params).map(drop)
        };
        if script.get("ignore_errors").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Err(e) = result {
            return deterministic(
                &format!("sql_{}", e.kind_name()),
                format!("statement {i}: {e}"),
            );
        }
    }
    let sleep_on = script.get("sleep_on_attempt").and_then(Value::as_u64);
    if let Some(ms) = script.get("sleep_ms").and_then(Value::as_u64) {
        if sleep_on.is_none_or(|a| a == u64::from(event.attempt)) {
            log(Level::Info, Some(&event.id), &format!("sleeping {ms} ms"));
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    match script
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("success")
    {
        "transient" => transient("scripted_transient", "scripted"),
        "deterministic" => deterministic("scripted_deterministic", "scripted"),
        _ => success(),
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

projector_plugin_sdk::export!(SqlProbe);
