//! `chronicle-entries` (seed 004): projects the chronicle's source of truth (`chronicle_events`,
//! written by the application with its action context) into the read model `chronicle_entries`
//! through the host's `sql` capability.
//!
//! - Idempotent: `chronicle_entries.id` = the chronicle event's id, written with an upsert, so a
//!   redelivery, replay or rebuild never duplicates an entry.
//! - Payload (camelCase, the chronicle event plus the seed's envelope): `chronicleEventId`,
//!   `actorUserId`, `entityType`, `entityId`, `eventType`, `before`, `after`, `occurredAt`,
//!   `requestId`, `reason`. A missing actor or entity (or id, type, time) is a deterministic
//!   `bad_payload`: the chronicle would lose its accountability.
//! - Database errors map to outcomes as the SDK maps them (`projector_plugin_sdk::sql`):
//!   serialization failures, timeouts and connection errors are transient; permission and other
//!   errors are deterministic, a value Postgres refuses as data (a malformed `occurredAt`) is
//!   `bad_payload`.
//! - One statement per batch: the valid events of a batch are upserted together (one round trip,
//!   not one per event). If that statement fails, every event in it is charged with the error;
//!   the host then rolls the batch back and re-runs it one event per call (see
//!   `Handler::handle_in_transaction`), so only the culprit keeps its failure.

use projector_plugin_sdk::{
    deterministic, reason, sql, success, Event, Guest, Outcome, PluginInfo,
};
use serde_json::{json, Value};

const UPSERT: &str = "\
INSERT INTO chronicle_entries (id, actor_user_id, entity_type, entity_id, event_type, summary,
                               before, after, occurred_at, request_id, reason)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::timestamptz, $10, $11)
ON CONFLICT (id) DO UPDATE SET
    actor_user_id = EXCLUDED.actor_user_id, entity_type = EXCLUDED.entity_type,
    entity_id = EXCLUDED.entity_id, event_type = EXCLUDED.event_type, summary = EXCLUDED.summary,
    before = EXCLUDED.before, after = EXCLUDED.after, occurred_at = EXCLUDED.occurred_at,
    request_id = EXCLUDED.request_id, reason = EXCLUDED.reason";

/// [`UPSERT`] for many entries: `$1` is a JSON array of rows, each the array of [`UPSERT`]'s
/// eleven parameters.
const UPSERT_MANY: &str = "\
INSERT INTO chronicle_entries (id, actor_user_id, entity_type, entity_id, event_type, summary,
                               before, after, occurred_at, request_id, reason)
SELECT (r->>0)::uuid, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::jsonb, (r->>7)::jsonb,
       (r->>8)::timestamptz, r->>9, r->>10
FROM jsonb_array_elements($1::jsonb) AS r
ON CONFLICT (id) DO UPDATE SET
    actor_user_id = EXCLUDED.actor_user_id, entity_type = EXCLUDED.entity_type,
    entity_id = EXCLUDED.entity_id, event_type = EXCLUDED.event_type, summary = EXCLUDED.summary,
    before = EXCLUDED.before, after = EXCLUDED.after, occurred_at = EXCLUDED.occurred_at,
    request_id = EXCLUDED.request_id, reason = EXCLUDED.reason";

struct ChronicleEntries;

fn text<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The entry's [`UPSERT`] parameters, or why the event has none.
fn entry(event: &Event) -> Result<Value, Outcome> {
    let p: Value = match serde_json::from_str(&event.payload) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(deterministic(
                reason::BAD_PAYLOAD,
                "payload is not a JSON object",
            ))
        }
    };
    let mut missing = Vec::new();
    let mut need = |key: &'static str| {
        let v = text(&p, key);
        if v.is_none() {
            missing.push(key);
        }
        v.unwrap_or("")
    };
    let id = need("chronicleEventId");
    let actor = need("actorUserId");
    let entity_type = need("entityType");
    let entity_id = need("entityId");
    let event_type = need("eventType");
    let occurred_at = need("occurredAt");
    if !missing.is_empty() {
        return Err(deterministic(
            reason::BAD_PAYLOAD,
            format!("missing {}", missing.join(", ")),
        ));
    }
    let summary = format!("{actor} {event_type} {entity_type} {entity_id}");
    Ok(json!([
        id,
        actor,
        entity_type,
        entity_id,
        event_type,
        summary,
        p.get("before")
            .filter(|v| !v.is_null())
            .map(Value::to_string),
        p.get("after")
            .filter(|v| !v.is_null())
            .map(Value::to_string),
        occurred_at,
        text(&p, "requestId"),
        text(&p, "reason"),
    ]))
}

impl Guest for ChronicleEntries {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "chronicle-entries".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(events.len());
        let mut rows = Vec::new();
        for event in &events {
            match entry(event) {
                Ok(row) => {
                    rows.push(row);
                    outcomes.push(None);
                }
                Err(outcome) => outcomes.push(Some(outcome)),
            }
        }
        let written = match rows.len() {
            0 => Ok(0),
            1 => sql::execute(UPSERT, &rows[0]),
            _ => sql::execute(UPSERT_MANY, &(rows,)),
        };
        let result = match written {
            Ok(_) => success(),
            Err(e) => e.outcome(),
        };
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| result.clone()))
            .collect()
    }
}

projector_plugin_sdk::export!(ChronicleEntries);
