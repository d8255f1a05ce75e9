//! `{{name}}`: a projector projection plugin, scaffolded by `projector plugin new`.
//!
//! The host hands `handle` a batch of outbox events and expects exactly one outcome per event,
//! in order: `Success`, `Transient` (retried with backoff) or `Deterministic` (failed at once).
//! The contract is documented field by field in `wit/deps/projector-plugin/plugin.wit`.

wit_bindgen::generate!({
    path: "wit",
    world: "projection",
    // The contract lives in a dependency package (wit/deps): generate its interfaces too.
    generate_all,
});

use exports::projector::plugin::projection::{Event, Guest, Outcome, PluginInfo};
#if search
use projector::plugin::config;
#endif
use projector::plugin::log::{log, Level};
#if search
use projector::plugin::search::{bulk, Action, BulkError, Operation};
#endif
#if sql
use projector::plugin::sql::{execute, ErrorKind, SqlError};
#endif
use projector::plugin::types::Failure;
use serde_json::Value;

#if sql
/// Idempotent: keyed by the event id, so a redelivery, replay or rebuild changes nothing.
/// The table is in `migrations/0001_{{table}}.sql`; grant it with
/// `[projection.grants] sql_tables = ["{{table}}"]`.
const UPSERT: &str = "\
INSERT INTO {{table}} (event_id, event_type, aggregate_id, payload)
VALUES ($1::uuid, $2, $3, $4::jsonb)
ON CONFLICT (event_id) DO UPDATE SET
    event_type = EXCLUDED.event_type, aggregate_id = EXCLUDED.aggregate_id,
    payload = EXCLUDED.payload";

#endif
struct Plugin;

fn failure(reason: &str, message: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        message: message.into(),
    }
}

#if sql
/// Retrying helps with serialization failures, timeouts and lost connections; not with the rest.
fn from_sql(e: SqlError) -> Outcome {
    let message = format!("{} ({})", e.message, e.code);
    match e.kind {
        ErrorKind::SerializationFailure => {
            Outcome::Transient(failure("sql_serialization", message))
        }
        ErrorKind::Timeout => Outcome::Transient(failure("sql_timeout", message)),
        ErrorKind::Connection => Outcome::Transient(failure("sql_connection", message)),
        ErrorKind::PermissionDenied => Outcome::Deterministic(failure("sql_permission", message)),
        ErrorKind::UniqueViolation | ErrorKind::Other => {
            Outcome::Deterministic(failure("sql_error", message))
        }
    }
}

#endif
#if search
/// Indexes the payload as document `aggregate-id` with external version `seq`: a stale or
/// duplicate event is answered 409 and changes nothing, which is success.
fn index_document(event: &Event, payload: &Value) -> Option<Outcome> {
    let Some(index) = config::get("index") else {
        return Some(Outcome::Deterministic(failure(
            "bad_config",
            "the projection's config has no `index`",
        )));
    };
    let operation = Operation {
        action: Action::Index,
        index,
        id: event.aggregate_id.clone(),
        document: Some(payload.to_string()),
        version: Some(event.seq),
    };
    match bulk(&[operation]) {
        Ok(items) => match items.first() {
            Some(item) if matches!(item.status, 200 | 201 | 409) => None,
            Some(item) if item.status == 429 => Some(Outcome::Transient(failure(
                "es_429",
                item.error_reason.clone(),
            ))),
            Some(item) if item.status >= 500 => Some(Outcome::Transient(failure(
                "es_5xx",
                item.error_reason.clone(),
            ))),
            Some(item) => Some(Outcome::Deterministic(failure(
                "es_rejected",
                format!("{} {}: {}", item.status, item.error_type, item.error_reason),
            ))),
            None => Some(Outcome::Transient(failure("es_response", "no item result"))),
        },
        Err(BulkError::Connect(m)) => Some(Outcome::Transient(failure("es_connect", m))),
        Err(BulkError::Status(f)) if f.status == 429 || f.status >= 500 => Some(
            Outcome::Transient(failure("es_status", format!("{}: {}", f.status, f.message))),
        ),
        Err(e) => Some(Outcome::Deterministic(failure(
            "es_request",
            format!("{e:?}"),
        ))),
    }
}

#endif
fn project(event: &Event) -> Outcome {
    let payload: Value = match serde_json::from_str(&event.payload) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Outcome::Deterministic(failure("bad_payload", "payload is not a JSON object")),
    };
#if sql
    let params = serde_json::json!([
        event.id,
        event.event_type,
        event.aggregate_id,
        payload.to_string(),
    ]);
    if let Err(e) = execute(UPSERT, &params.to_string()) {
        return from_sql(e);
    }
#endif
#if search
    if let Some(outcome) = index_document(event, &payload) {
        return outcome;
    }
#endif
    let keys: Vec<&str> = payload
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    log(
        Level::Debug,
        Some(&event.id),
        &format!(
            "projected {} (payload keys: {})",
            event.event_type,
            keys.join(", ")
        ),
    );
    Outcome::Success
}

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events.iter().map(project).collect()
    }
}

export!(Plugin);
