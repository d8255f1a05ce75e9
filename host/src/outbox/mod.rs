//! The outbox delivery state machine. Every transition is one SQL statement in this directory,
//! run by the Rust function next to it; nothing else in the host writes `status`.
//!
//! The state model is drawn in the README ("Delivery states"): pending → processing →
//! done | pending-with-retry | failed, plus release at shutdown and the operator transitions
//! ([`operator`]): replay (failed → pending), skip (failed → skipped), pause/resume.
//!
//! Invariants kept here:
//! - **Claiming** ([`claim`]) takes due `pending` rows and `processing` rows whose lease expired
//!   (stuck work, reclaimed) with `FOR UPDATE SKIP LOCKED`, sets a fresh `claim_batch_id` and a
//!   lease, and counts the attempt. With per-aggregate ordering a row is claimable only when no
//!   earlier row of its projection and aggregate is unfinished (not `done` or `skipped`), so at most
//!   one event per aggregate is ever in flight and a `failed` event blocks the ones after it.
//! - **Fencing** ([`settle`], [`lease`]): every write after the claim is conditional on
//!   `claim_batch_id` still being ours and `status = 'processing'`. A worker that lost its lease
//!   changes nothing.
//! - **One transaction per batch** for all outcomes of a batch ([`settle`]).
//! - **Retries** ([`backoff`]): exponential with jitter, between the base and max backoff.
//! - **Retention** ([`retention`]) deletes only old `done` rows; [`status`] only reads.

pub mod backoff;
pub mod claim;
pub mod lease;
pub mod operator;
pub mod retention;
pub mod settle;
pub mod status;

use uuid::Uuid;

/// One claimed event, as handed to a plugin.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    /// `outbox_events.seq`.
    pub seq: i64,
    /// `outbox_events.id`.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Aggregate type ('' when unset).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// JSON payload as text.
    pub payload: String,
    /// Headers as (key, value) pairs.
    pub headers: Vec<(String, String)>,
    /// RFC 3339 UTC.
    pub occurred_at: String,
    /// 1-based attempt number of this delivery.
    pub attempt: i32,
    /// Whether this claim took the row over from an expired lease.
    pub reclaimed: bool,
    /// Set when a field was over its bound at the claim: (reason, message). The oversized
    /// fields were not read (they are empty here) and the host fails the event itself.
    pub too_large: Option<(&'static str, String)>,
}

/// A batch this worker holds.
#[derive(Debug)]
pub struct Claim {
    /// The fencing token every later write must match.
    pub batch_id: Uuid,
    /// The projection.
    pub projection: String,
    /// The events, in `seq` order.
    pub events: Vec<ClaimedEvent>,
}

/// What became of one event, as the host records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Applied.
    Success,
    /// Retry later.
    Transient {
        /// Metric label.
        reason: String,
        /// Stored in `error`.
        message: String,
    },
    /// Never retry.
    Deterministic {
        /// Metric label.
        reason: String,
        /// Stored in `error`.
        message: String,
    },
}

impl Verdict {
    /// A transient verdict.
    pub fn transient(reason: &str, message: impl Into<String>) -> Self {
        Verdict::Transient {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Makes a plugin-supplied reason safe as a metric label: `[a-z0-9_]`, at most 64 bytes.
pub fn sanitize_reason(reason: &str) -> String {
    let mut out: String = reason
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("unspecified");
    }
    out
}
