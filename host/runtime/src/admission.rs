//! What reaches a plugin: before a batch is handed over, the host answers itself for events the
//! plugin must not see.
//!
//! Invariants:
//! - An event whose payload is larger than the projection's `max_payload_bytes` fails
//!   deterministically (`payload_too_large`) without reaching the plugin: no plugin is ever asked
//!   to parse an arbitrarily large document inside its memory cap. Claimed events arrive with
//!   their oversized fields unread (`too_large`, see `outbox::claim`): headers, event type,
//!   aggregate type and aggregate id over their bounds fail the same way
//!   (`headers_too_large`, `event_type_too_long`, ...), and the host never held them.
//! - An event of a type the plugin does not declare (`describe()`'s `event-types`, exact names or
//!   prefixes ending in `*`) is delivered (the contract's default), settled `done` (`skip`) or
//!   failed deterministically (`unknown_event_type`, `fail`), as the projection says.
//! - In a batch holding runs (several events of one aggregate), an event after one the host
//!   failed is not admitted either: it is [`Verdict::Deferred`], back to `pending` untried.
//! - The plugin sees the admitted events in their claimed order; the verdicts are merged back in
//!   that order, so settling sees one verdict per claimed event as always.

use projector_core::outbox::{Claim, Verdict};
use projector_core::spec::{Tuning, UnknownEventTypes};
use std::sync::Arc;

/// A batch split into what the plugin sees and what the host already answered.
pub struct Admitted {
    /// The events for the plugin (the claim's batch id and projection).
    pub claim: Arc<Claim>,
    /// One entry per claimed event: the host's verdict, or `None` when the plugin answers.
    answered: Vec<Option<Verdict>>,
}

/// Whether `event_type` is one of `declared` (exact, or a prefix ending in `*`).
pub fn declares(declared: &[String], event_type: &str) -> bool {
    declared.iter().any(|d| match d.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => d == event_type,
    })
}

impl Admitted {
    /// Splits `claim` under `tuning`'s limits for a plugin declaring `declared`. When the host
    /// answers for no event (the common case) the plugin gets `claim` itself, not a copy.
    pub fn split(claim: &Arc<Claim>, tuning: &Tuning, declared: &[String]) -> Admitted {
        let answered: Vec<Option<Verdict>> = claim
            .events
            .iter()
            .map(|e| {
                if let Some((reason, message)) = &e.too_large {
                    return Some(Verdict::Deterministic {
                        reason: (*reason).into(),
                        message: message.clone(),
                    });
                }
                if e.payload.len() > tuning.max_payload_bytes {
                    return Some(Verdict::Deterministic {
                        reason: "payload_too_large".into(),
                        message: format!(
                            "payload of {} bytes is over the projection's max_payload_bytes ({})",
                            e.payload.len(),
                            tuning.max_payload_bytes
                        ),
                    });
                }
                match tuning.unknown_event_types {
                    UnknownEventTypes::Deliver => None,
                    _ if declares(declared, &e.event_type) => None,
                    UnknownEventTypes::Skip => Some(Verdict::Success),
                    UnknownEventTypes::Fail => Some(Verdict::Deterministic {
                        reason: "unknown_event_type".into(),
                        message: format!(
                            "the plugin does not declare event type `{}` (declares {declared:?})",
                            e.event_type
                        ),
                    }),
                }
            })
            .collect();
        let mut answered = answered;
        // A run stops at its first non-success: what follows it is not the plugin's to see.
        let mut stopped = std::collections::HashSet::new();
        for (e, a) in claim.events.iter().zip(answered.iter_mut()) {
            if stopped.contains(e.aggregate_id.as_str()) {
                *a = Some(Verdict::Deferred);
            } else if matches!(a, Some(v) if *v != Verdict::Success) {
                stopped.insert(e.aggregate_id.as_str());
            }
        }
        let claim = if answered.iter().all(Option::is_none) {
            Arc::clone(claim)
        } else {
            Arc::new(Claim {
                batch_id: claim.batch_id,
                projection: claim.projection.clone(),
                events: claim
                    .events
                    .iter()
                    .zip(&answered)
                    .filter(|(_, a)| a.is_none())
                    .map(|(e, _)| e.clone())
                    .collect(),
            })
        };
        Admitted { claim, answered }
    }

    /// One verdict per claimed event: the host's, or the next of the plugin's `verdicts`.
    pub fn merge(self, verdicts: Vec<Verdict>) -> Vec<Verdict> {
        let mut from_plugin = verdicts.into_iter();
        self.answered
            .into_iter()
            .map(|v| {
                v.unwrap_or_else(|| {
                    from_plugin
                        .next()
                        .expect("one plugin verdict per admitted event")
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::outbox::ClaimedEvent;

    fn event(seq: i64, event_type: &str, payload: &str) -> ClaimedEvent {
        ClaimedEvent {
            seq,
            id: uuid::Uuid::new_v4(),
            event_type: event_type.into(),
            aggregate_type: String::new(),
            aggregate_id: format!("agg-{seq}"),
            payload: payload.into(),
            headers: Vec::new(),
            occurred_at: String::new(),
            attempt: 1,
            reclaimed: false,
            too_large: None,
        }
    }

    #[test]
    fn oversized_and_undeclared_events_are_answered_by_the_host_in_order() {
        let claim = Arc::new(Claim {
            batch_id: uuid::Uuid::new_v4(),
            projection: "p".into(),
            events: vec![
                event(1, "book.created", "{}"),
                event(2, "book.created", &format!("\"{}\"", "x".repeat(100))),
                event(3, "car.sold", "{}"),
                event(4, "book.renamed", "{}"),
            ],
        });
        let mut tuning = Tuning {
            concurrency: 1,
            batch_size: 10,
            events_per_aggregate: 1,
            lease: std::time::Duration::from_secs(1),
            max_processing: std::time::Duration::from_secs(1),
            max_attempts: 1,
            base_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(1),
            max_payload_bytes: 50,
            batch_max_bytes: usize::MAX,
            unknown_event_types: UnknownEventTypes::Fail,
        };
        let declared = vec!["book.*".to_owned()];
        let admitted = Admitted::split(&claim, &tuning, &declared);
        let seqs: Vec<i64> = admitted.claim.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 4]);
        let merged = admitted.merge(vec![Verdict::Success, Verdict::transient("x", "y")]);
        assert_eq!(merged[0], Verdict::Success);
        assert!(
            matches!(&merged[1], Verdict::Deterministic { reason, .. } if reason == "payload_too_large")
        );
        assert!(
            matches!(&merged[2], Verdict::Deterministic { reason, .. } if reason == "unknown_event_type")
        );
        assert_eq!(merged[3], Verdict::transient("x", "y"));

        tuning.unknown_event_types = UnknownEventTypes::Skip;
        let skipped = Admitted::split(&claim, &tuning, &declared);
        assert_eq!(skipped.claim.events.len(), 2);
        tuning.unknown_event_types = UnknownEventTypes::Deliver;
        let delivered = Admitted::split(&claim, &tuning, &declared);
        assert_eq!(delivered.claim.events.len(), 3);
        tuning.max_payload_bytes = 1000;
        let all = Admitted::split(&claim, &tuning, &declared);
        assert!(
            Arc::ptr_eq(&all.claim, &claim),
            "nothing answered: the batch itself, no copy"
        );
    }

    #[test]
    fn in_a_run_the_events_after_one_the_host_fails_are_deferred_not_admitted() {
        let mut first = event(1, "book.created", &format!("\"{}\"", "x".repeat(100)));
        first.aggregate_id = "book-1".into();
        let mut second = event(2, "book.renamed", "{}");
        second.aggregate_id = "book-1".into();
        let other = event(3, "book.created", "{}");
        let claim = Arc::new(Claim {
            batch_id: uuid::Uuid::new_v4(),
            projection: "p".into(),
            events: vec![first, second, other],
        });
        let tuning = Tuning {
            concurrency: 1,
            batch_size: 10,
            events_per_aggregate: 1,
            lease: std::time::Duration::from_secs(1),
            max_processing: std::time::Duration::from_secs(1),
            max_attempts: 1,
            base_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(1),
            max_payload_bytes: 50,
            batch_max_bytes: usize::MAX,
            unknown_event_types: UnknownEventTypes::Deliver,
        };
        let admitted = Admitted::split(&claim, &tuning, &[]);
        let seqs: Vec<i64> = admitted.claim.events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [3],
            "only the other aggregate's event reaches the plugin"
        );
        let merged = admitted.merge(vec![Verdict::Success]);
        assert!(
            matches!(&merged[0], Verdict::Deterministic { reason, .. } if reason == "payload_too_large")
        );
        assert_eq!(merged[1], Verdict::Deferred);
        assert_eq!(merged[2], Verdict::Success);
    }
}
