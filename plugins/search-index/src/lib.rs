//! `search-index`: the seeds' `search_index_to_elastic` projection. Book, block and tag events
//! become documents in one search index, through the host's `search` capability.
//!
//! Events: `<entity>.<action>` with entity `book`, `block` or `tag` and action `created`,
//! `updated`, `renamed` or `deleted`. Config: `index` (required; the host fills it from
//! `ELASTIC_INDEX` when the projection's config has none), which the projection must be granted
//! (`[projection.grants] search_indices`).
//!
//! Documents: id = the aggregate id; created/updated/renamed replace the whole document (the
//! payload carries the entity's fields after the change), deleted removes it. The document is
//! the payload object, every field copied as is (so the seeds' envelope `tenantId`, `requestId`,
//! `correlationId`, `source`, `occurredAt`, `aggregateId` stays searchable), plus four fields
//! the plugin owns and overwrites: `entityType` (`book`), `entityId` (the aggregate id),
//! `eventType` (`book.renamed`) and `eventSeq` (the event's `seq`). Required per entity, a
//! non-empty string: `title` for a book, `content` for a block, `name` for a tag.
//!
//! Every write carries the event `seq` as an external version, so a stale or duplicate event can
//! never overwrite a newer document: the server answers 409, which means "already newer" and is
//! a success. A delete leaves a versioned tombstone, so an older event re-delivered after it
//! does not bring the document back.
//!
//! Outcomes: one bulk request per batch, its answers classified by the SDK
//! (`projector_plugin_sdk::search`): per item, 2xx, 404 on delete and 409 are `success`; 429,
//! 408 and 5xx transient (`es_429`, `es_timeout`, `es_5xx`); 400 (mapping or parsing)
//! deterministic `es_mapping`; any other 4xx deterministic `es_rejected`. A request that fails
//! whole: server unreachable → transient `es_connect`; 429 / 408 / 5xx as for an item; 401/403
//! → transient `es_auth` (credentials are fixed by an operator, not by the event); other
//! statuses → deterministic `es_status`; an index outside the grant → deterministic
//! `es_forbidden`. Before anything is sent: a payload that is not a JSON object, misses its
//! required field or has an unknown event type → deterministic `bad_payload`; no `index` →
//! deterministic `bad_config`.

use projector_plugin_sdk::search::{self, Action, Operation};
use projector_plugin_sdk::{config, deterministic, reason, Event, Guest, Outcome, PluginInfo};
use serde_json::{Map, Value};

struct SearchIndex;

/// The field a document of `entity` cannot do without.
fn required_field(entity: &str) -> Option<&'static str> {
    match entity {
        "book" => Some("title"),
        "block" => Some("content"),
        "tag" => Some("name"),
        _ => None,
    }
}

/// The bulk operation for `event`, or why it has none.
fn operation(event: &Event, index: &str) -> Result<Operation, Outcome> {
    let bad =
        |why: String| deterministic(reason::BAD_PAYLOAD, format!("{}: {why}", event.event_type));
    let (entity, action) = event
        .event_type
        .split_once('.')
        .ok_or_else(|| bad("not an `<entity>.<action>` event type".into()))?;
    let required =
        required_field(entity).ok_or_else(|| bad(format!("unknown entity `{entity}`")))?;
    if event.aggregate_id.is_empty() {
        return Err(bad("no aggregate id".into()));
    }
    let version = Some(event.seq);
    match action {
        "deleted" => Ok(Operation {
            action: Action::Delete,
            index: index.to_owned(),
            id: event.aggregate_id.clone(),
            document: None,
            version,
        }),
        "created" | "updated" | "renamed" => {
            let mut doc: Map<String, Value> = match serde_json::from_str(&event.payload) {
                Ok(Value::Object(map)) => map,
                _ => return Err(bad("the payload is not a JSON object".into())),
            };
            match doc.get(required) {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                Some(_) => return Err(bad(format!("`{required}` is not a non-empty string"))),
                None => return Err(bad(format!("the payload has no `{required}`"))),
            }
            doc.insert("entityType".into(), entity.into());
            doc.insert("entityId".into(), event.aggregate_id.clone().into());
            doc.insert("eventType".into(), event.event_type.clone().into());
            doc.insert("eventSeq".into(), event.seq.into());
            Ok(Operation {
                action: Action::Index,
                index: index.to_owned(),
                id: event.aggregate_id.clone(),
                document: Some(Value::Object(doc).to_string()),
                version,
            })
        }
        other => Err(bad(format!("unknown action `{other}`"))),
    }
}

impl Guest for SearchIndex {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "search-index".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["book.*".into(), "block.*".into(), "tag.*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let index = match config::get("index").filter(|i| !i.trim().is_empty()) {
            Some(index) => index,
            None => {
                let message = "config key `index` is not set: set it under [projection.config] \
                               or set ELASTIC_INDEX";
                return events
                    .iter()
                    .map(|_| deterministic(reason::BAD_CONFIG, message))
                    .collect();
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(events.len());
        let (mut batch, mut slots) = (Vec::new(), Vec::new());
        for (i, event) in events.iter().enumerate() {
            match operation(event, &index) {
                Ok(op) => {
                    outcomes.push(None);
                    slots.push(i);
                    batch.push((event, op));
                }
                Err(outcome) => outcomes.push(Some(outcome)),
            }
        }
        // One outcome per operation, in order.
        for (i, outcome) in slots.into_iter().zip(search::write(&batch)) {
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("search::write answers every operation"))
            .collect()
    }
}

projector_plugin_sdk::export!(SearchIndex);
