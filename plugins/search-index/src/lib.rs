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
//! Outcomes: one bulk request per batch. Per item: 2xx, 404 on delete and 409 are `success`; 429
//! is transient `es_429`; 5xx transient `es_5xx`; 400 (mapping or parsing) deterministic
//! `es_mapping`; any other 4xx deterministic `es_rejected`. A request that fails whole: server
//! unreachable → transient `es_connect`; 429 / 5xx → transient `es_429` / `es_5xx`; 401/403 →
//! transient `es_auth` (credentials are fixed by an operator, not by the event); other statuses
//! → deterministic `es_status`; an index outside the grant → deterministic `es_forbidden`.
//! Before anything is sent: a payload that is not a JSON object, misses its required field or
//! has an unknown event type → deterministic `bad_payload`; no `index` → deterministic
//! `bad_config`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "search-plugin",
});

use exports::projector::plugin::projection::{Event, Guest, Outcome, PluginInfo};
use projector::plugin::config;
use projector::plugin::log::{log, Level};
use projector::plugin::search::{self, Action, BulkError, ItemResult, Operation};
use projector::plugin::types::Failure;
use serde_json::{Map, Value};

struct SearchIndex;

fn failure(reason: &str, message: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        message: message.into(),
    }
}

fn deterministic(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Deterministic(failure(reason, message))
}

fn transient(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Transient(failure(reason, message))
}

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
    let bad = |why: String| deterministic("bad_payload", format!("{}: {why}", event.event_type));
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

/// What the server's answer for one operation means for its event.
fn item_outcome(event: &Event, op: &Operation, item: &ItemResult) -> Outcome {
    let detail = || {
        format!(
            "{} {}/{}: {} {}: {}",
            item.status, op.index, op.id, event.event_type, item.error_type, item.error_reason
        )
    };
    match item.status {
        200..=299 => Outcome::Success,
        404 if op.action == Action::Delete => Outcome::Success,
        409 => {
            log(
                Level::Debug,
                Some(&event.id),
                &format!(
                    "{}/{} already holds a version >= {}",
                    op.index, op.id, event.seq
                ),
            );
            Outcome::Success
        }
        429 => transient("es_429", detail()),
        500..=599 => transient("es_5xx", detail()),
        400 => deterministic("es_mapping", detail()),
        _ => deterministic("es_rejected", detail()),
    }
}

/// The outcome of every sent event when the bulk request failed as a whole.
fn request_outcome(error: &BulkError) -> Outcome {
    match error {
        BulkError::Connect(m) => transient("es_connect", format!("search server unreachable: {m}")),
        BulkError::Status(f) => {
            let message = format!("bulk request answered {}: {}", f.status, f.message);
            match f.status {
                429 => transient("es_429", message),
                500..=599 => transient("es_5xx", message),
                401 | 403 => transient("es_auth", message),
                _ => deterministic("es_status", message),
            }
        }
        BulkError::Forbidden(m) => deterministic("es_forbidden", m.clone()),
        BulkError::Invalid(m) => deterministic("es_invalid", m.clone()),
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
                    .map(|_| deterministic("bad_config", message))
                    .collect();
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(events.len());
        let mut sent: Vec<(usize, Operation)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match operation(event, &index) {
                Ok(op) => {
                    outcomes.push(None);
                    sent.push((i, op));
                }
                Err(outcome) => outcomes.push(Some(outcome)),
            }
        }
        if !sent.is_empty() {
            let ops: Vec<Operation> = sent.iter().map(|(_, op)| op.clone()).collect();
            match search::bulk(&ops) {
                Ok(items) => {
                    for ((i, op), item) in sent.iter().zip(&items) {
                        outcomes[*i] = Some(item_outcome(&events[*i], op, item));
                    }
                }
                Err(error) => {
                    let outcome = request_outcome(&error);
                    log(
                        Level::Warn,
                        None,
                        &format!("bulk request of {} operations failed: {error:?}", ops.len()),
                    );
                    for (i, _) in &sent {
                        outcomes[*i] = Some(outcome.clone());
                    }
                }
            }
        }
        // The host promises one result per operation; should it not, the unanswered events are
        // retried rather than left without an outcome.
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| transient("es_response", "no result for this operation")))
            .collect()
    }
}

export!(SearchIndex);
