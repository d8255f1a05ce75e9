//! `{{name}}`: a projector projection plugin, scaffolded by `projector plugin new`.
//!
//! The host hands `handle` a batch of outbox events and expects exactly one outcome per event,
//! in order: `success()`, `transient(..)` (retried with backoff) or `deterministic(..)` (failed
//! at once). The contract is documented field by field in
//! `vendor/projector-plugin-sdk/wit/plugin.wit`; the SDK beside it (`projector_plugin_sdk`) maps
//! the capabilities' errors to outcomes and names the reasons operators see.
//!
//! The component imports the capabilities this code calls, and only those; each needs a grant
//! in the host's config.

#if search
use projector_plugin_sdk::search::{self, Action, Operation};
#endif
#if sql
use projector_plugin_sdk::sql;
#endif
#if search
use projector_plugin_sdk::config;
#endif
use projector_plugin_sdk::log::{log, Level};
use projector_plugin_sdk::{deterministic, reason, success, Event, Guest, Outcome, PluginInfo};
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

#if search
/// Indexes the payload as document `aggregate-id` with external version `seq`: a stale or
/// duplicate event is answered 409 and changes nothing, which is success.
fn index_document(event: &Event, payload: &Value) -> Outcome {
    let Some(index) = config::get("index") else {
        return deterministic(reason::BAD_CONFIG, "the projection's config has no `index`");
    };
    let operation = Operation {
        action: Action::Index,
        index,
        id: event.aggregate_id.clone(),
        document: Some(payload.to_string()),
        version: Some(event.seq),
    };
    let mut outcomes = search::write(&[(event, operation)]);
    outcomes.remove(0)
}

#endif
fn project(event: &Event) -> Outcome {
    let payload: Value = match serde_json::from_str(&event.payload) {
        Ok(v @ Value::Object(_)) => v,
        _ => return deterministic(reason::BAD_PAYLOAD, "payload is not a JSON object"),
    };
#if sql
    let params = (
        &event.id,
        &event.event_type,
        &event.aggregate_id,
        payload.to_string(),
    );
    if let Err(e) = sql::execute(UPSERT, &params) {
        return e.outcome();
    }
#endif
#if search
    let indexed = index_document(event, &payload);
    if !matches!(indexed, Outcome::Success) {
        return indexed;
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
    success()
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

projector_plugin_sdk::export!(Plugin);
