//! What travels through the delivery state machine: a claimed batch, its events, and the
//! verdict the host records for each. No I/O: the transitions themselves are SQL statements in
//! `projector_store::outbox`.
//!
//! A plugin answers each event with a WIT `outcome` (plugin side: success, transient or
//! deterministic), which the host turns into the [`Verdict`] it records (host side: the same
//! three plus `Deferred`); what an operator's replay or skip did is neither, but an
//! `ActionReport` (`projector_store::outbox::operator`).
//!
//! Invariants:
//! - A batch's verdicts are in the order of its events, one each.
//! - In a run (consecutive events of one aggregate in a batch) nothing after the first
//!   non-success takes effect: [`defer_after_failures`] turns it into [`Verdict::Deferred`].
//! - A reason a plugin gives becomes a metric label only through [`sanitize_reason`].

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
    /// Not applied: the event followed a non-success of its aggregate in the same run (see
    /// [`defer_after_failures`]). It goes back to due-now `pending` with its attempt given back;
    /// whatever the plugin answered for it is ignored.
    Deferred,
}

/// Within a batch holding runs (several consecutive events of one aggregate, in seq order), a
/// run is settled up to its first non-success: every later event of that aggregate in the batch
/// becomes [`Verdict::Deferred`]. With at most one event per aggregate this changes nothing.
/// Returns how many verdicts it deferred.
pub fn defer_after_failures(events: &[ClaimedEvent], verdicts: &mut [Verdict]) -> usize {
    let mut stopped: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut deferred = 0;
    for (event, verdict) in events.iter().zip(verdicts.iter_mut()) {
        if stopped.contains(event.aggregate_id.as_str()) {
            if *verdict != Verdict::Deferred {
                *verdict = Verdict::Deferred;
                deferred += 1;
            }
        } else if *verdict != Verdict::Success {
            stopped.insert(&event.aggregate_id);
        }
    }
    deferred
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, aggregate: &str) -> ClaimedEvent {
        ClaimedEvent {
            seq,
            id: Uuid::new_v4(),
            event_type: "t".into(),
            aggregate_type: String::new(),
            aggregate_id: aggregate.into(),
            payload: "{}".into(),
            headers: Vec::new(),
            occurred_at: String::new(),
            attempt: 1,
            reclaimed: false,
            too_large: None,
        }
    }

    #[test]
    fn a_run_is_settled_up_to_its_first_non_success() {
        let events = [
            event(1, "a"),
            event(2, "b"),
            event(3, "a"),
            event(4, "a"),
            event(5, "b"),
            event(6, "c"),
        ];
        let mut verdicts = vec![
            Verdict::Success,
            Verdict::transient("es_connect", "down"),
            Verdict::Deterministic {
                reason: "bad_payload".into(),
                message: "no".into(),
            },
            Verdict::Success,
            Verdict::Success,
            Verdict::Success,
        ];
        assert_eq!(defer_after_failures(&events, &mut verdicts), 2);
        assert_eq!(verdicts[0], Verdict::Success);
        assert!(matches!(verdicts[1], Verdict::Transient { .. }));
        assert!(matches!(verdicts[2], Verdict::Deterministic { .. }));
        assert_eq!(verdicts[3], Verdict::Deferred, "after a's failure");
        assert_eq!(verdicts[4], Verdict::Deferred, "after b's failure");
        assert_eq!(verdicts[5], Verdict::Success, "c had no failure");
        let mut one_each = vec![Verdict::transient("x", "y"), Verdict::Success];
        assert_eq!(
            defer_after_failures(&events[..2], &mut one_each),
            0,
            "one event per aggregate: nothing deferred"
        );
    }
}
