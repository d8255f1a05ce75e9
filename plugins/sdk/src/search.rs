//! The `search` capability, and the one classification of its answers into outcomes.
//!
//! [`write`] sends one bulk request for a batch's operations and answers one outcome per
//! operation; [`item_outcome`] and [`request_outcome`] are its two halves, for a plugin that
//! calls [`bulk`] itself.
//!
//! Per item: 2xx is `success`; so are 409 (with external versions, `version = event.seq`, the
//! index already holds this or a newer version: a stale or duplicate event changes nothing) and
//! 404 on a delete (already gone). 429, 408 and 5xx are transient; 400 (the document does not
//! map or parse) is deterministic `es_mapping`, any other 4xx deterministic `es_rejected`.
//!
//! Per request: unreachable, 429, 408 and 5xx are transient. 401 and 403 are transient too
//! (`es_auth`): the credentials are the host's, the same for every event, and an operator fixes
//! them without touching the event, so retrying is right and failing every event of the outage
//! (to be replayed by hand) is not. Any other status is deterministic `es_status`, as are
//! operations the host refuses before sending (`es_forbidden`: an index not granted;
//! `es_invalid`: a malformed operation).

use crate::bindings::projector::plugin::search as wit;
use crate::log::{log, Level};
use crate::{deterministic, reason, transient, Event, Outcome};

pub use wit::{bulk, Action, BulkError, HttpFailure, ItemResult, Operation};

/// Sends `batch` (each operation with the event it is for) as one bulk request and returns one
/// outcome per operation, in order.
pub fn write(batch: &[(&Event, Operation)]) -> Vec<Outcome> {
    if batch.is_empty() {
        return Vec::new();
    }
    let operations: Vec<Operation> = batch.iter().map(|(_, op)| op.clone()).collect();
    match bulk(&operations) {
        // The host promises one result per operation; should it not, the unanswered events are
        // retried rather than left without an outcome.
        Ok(items) => batch
            .iter()
            .enumerate()
            .map(|(i, (event, op))| match items.get(i) {
                Some(item) => item_outcome(event, op, item),
                None => transient(reason::ES_RESPONSE, "no result for this operation"),
            })
            .collect(),
        Err(error) => {
            log(
                Level::Warn,
                None,
                &format!(
                    "bulk request of {} operations failed: {error:?}",
                    operations.len()
                ),
            );
            let outcome = request_outcome(&error);
            batch.iter().map(|_| outcome.clone()).collect()
        }
    }
}

/// What the server's answer for `op`, one operation of `event`, means for the event.
pub fn item_outcome(event: &Event, op: &Operation, item: &ItemResult) -> Outcome {
    let detail = || {
        format!(
            "{} {}/{}: {}: {}",
            item.status, op.index, op.id, item.error_type, item.error_reason
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
        429 => transient(reason::ES_429, detail()),
        408 => transient(reason::ES_TIMEOUT, detail()),
        500..=599 => transient(reason::ES_5XX, detail()),
        400 => deterministic(reason::ES_MAPPING, detail()),
        _ => deterministic(reason::ES_REJECTED, detail()),
    }
}

/// The outcome of every operation of a bulk request that failed as a whole.
pub fn request_outcome(error: &BulkError) -> Outcome {
    match error {
        BulkError::Connect(m) => transient(
            reason::ES_CONNECT,
            format!("search server unreachable: {m}"),
        ),
        BulkError::Status(f) => {
            let message = format!("bulk request answered {}: {}", f.status, f.message);
            match f.status {
                429 => transient(reason::ES_429, message),
                408 => transient(reason::ES_TIMEOUT, message),
                500..=599 => transient(reason::ES_5XX, message),
                401 | 403 => transient(reason::ES_AUTH, message),
                _ => deterministic(reason::ES_STATUS, message),
            }
        }
        BulkError::Forbidden(m) => deterministic(reason::ES_FORBIDDEN, m.clone()),
        BulkError::Invalid(m) => deterministic(reason::ES_INVALID, m.clone()),
    }
}
