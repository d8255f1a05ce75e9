//! Canary rollouts in the claim loop: which aggregates a canary version handles, how a claimed
//! batch is split between it and the active version, what is counted, and the decision rule.
//! (Starting, promoting and rolling back a canary, and following other hosts, is
//! [`crate::plugin_versions`]; its rows are `projector_store::versions`.)
//!
//! Invariants:
//! - An aggregate's side is a pure function of its id and the share ([`is_canary_side`]): the
//!   64-bit FNV-1a hash of the aggregate id's UTF-8 bytes, mod 100, below the share percent. So
//!   every host, and every batch, sends an aggregate to the same version while a canary runs,
//!   and per-aggregate ordering holds: an aggregate's events are never split between versions.
//! - A batch is split into at most two sub-batches that keep the claim's fencing token and their
//!   events' `seq` order; each is dispatched to one version and settled stamped with its label.
//! - A side's counters grow by one per outcome recorded (an event handed back untried counts
//!   nothing): `transient` when the settle scheduled a retry, `terminal` when the event failed.
//! - The decision ([`decide`]) is taken once the canary side recorded `min_events` outcomes: the
//!   canary is promoted when neither its transient nor its terminal failure rate exceeds the
//!   active version's over the same window by more than the margin, else rolled back.

use projector_runtime::LoadedPlugin;
use projector_store::outbox::settle::Settled;
use projector_store::outbox::{Claim, ClaimedEvent, Verdict};
use projector_store::versions::{RunningCanary, SideOutcomes};
use std::sync::Arc;

/// How often a host checks whether a canary it runs is due for its decision.
pub const DECISION_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// A canary this host runs beside a projection's active version.
pub struct Canary {
    /// `plugin_canaries.id`.
    pub id: i64,
    /// Percent of aggregates it handles (1 to 99).
    pub share_percent: u8,
    /// The canary version.
    pub plugin: Arc<LoadedPlugin>,
}

/// The 64-bit FNV-1a hash of `text`'s bytes.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `aggregate_id`'s events go to a canary handling `share_percent` % of aggregates.
pub fn is_canary_side(aggregate_id: &str, share_percent: u8) -> bool {
    fnv1a(aggregate_id) % 100 < u64::from(share_percent)
}

/// One sub-batch of a claim and the version it runs on.
pub struct Part {
    /// The sub-batch (same fencing token, a subset of the events in `seq` order).
    pub claim: Claim,
    /// The version to dispatch it to.
    pub plugin: Arc<LoadedPlugin>,
    /// `Some(canary id)` when a canary runs; with `canary_side`, whose counters it adds to.
    pub canary_id: Option<i64>,
    /// Whether this is the canary's side.
    pub canary_side: bool,
}

/// Splits `claim` between the `active` version and the `canary`, if one runs: the baseline's
/// part first, then the canary's, each non-empty part once. Without a canary the claim is one
/// part on the active version.
pub fn split(claim: Claim, active: Arc<LoadedPlugin>, canary: Option<&Canary>) -> Vec<Part> {
    let Some(canary) = canary else {
        return vec![Part {
            claim,
            plugin: active,
            canary_id: None,
            canary_side: false,
        }];
    };
    let Claim {
        batch_id,
        projection,
        events,
    } = claim;
    let (to_canary, to_baseline): (Vec<ClaimedEvent>, Vec<ClaimedEvent>) = events
        .into_iter()
        .partition(|e| is_canary_side(&e.aggregate_id, canary.share_percent));
    [
        (to_baseline, active, false),
        (to_canary, canary.plugin.clone(), true),
    ]
    .into_iter()
    .filter(|(events, _, _)| !events.is_empty())
    .map(|(events, plugin, canary_side)| Part {
        claim: Claim {
            batch_id,
            projection: projection.clone(),
            events,
        },
        plugin,
        canary_id: Some(canary.id),
        canary_side,
    })
    .collect()
}

/// The outcomes one settled sub-batch recorded (see the module invariants).
pub fn outcomes(
    events: &[ClaimedEvent],
    verdicts: &[Verdict],
    settled: &[Settled],
) -> SideOutcomes {
    let verdict_of: std::collections::HashMap<i64, &Verdict> =
        events.iter().map(|e| e.seq).zip(verdicts).collect();
    let mut out = SideOutcomes::default();
    for s in settled {
        match verdict_of.get(&s.seq) {
            None | Some(Verdict::Deferred) => continue,
            Some(_) => {}
        }
        out.events += 1;
        match s.status.as_str() {
            "pending" => out.transient += 1,
            "failed" => out.terminal += 1,
            _ => {}
        }
    }
    out
}

/// What to do with a running canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not yet: the canary side has recorded fewer than `min_events` outcomes.
    Wait,
    /// Make the canary the active version; the reason states the figures.
    Promote(String),
    /// Retire the canary; the active version takes its aggregates back. The reason states the
    /// figures and which rate was worse.
    RollBack(String),
}

fn rate(n: i64, of: i64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The decision rule (see the module invariants) applied to `c`'s counters.
pub fn decide(c: &RunningCanary) -> Decision {
    if c.canary_events < c.min_events {
        return Decision::Wait;
    }
    let figures = format!(
        "canary {} outcomes: transient {:.1}%, terminal {:.1}%; active {} outcomes: transient {:.1}%, terminal {:.1}%; margin {} points",
        c.canary_events,
        rate(c.canary_transient, c.canary_events),
        rate(c.canary_terminal, c.canary_events),
        c.baseline_events,
        rate(c.baseline_transient, c.baseline_events),
        rate(c.baseline_terminal, c.baseline_events),
        c.margin_percent,
    );
    let worse: Vec<&str> = [
        (
            "transient",
            rate(c.canary_transient, c.canary_events),
            rate(c.baseline_transient, c.baseline_events),
        ),
        (
            "terminal",
            rate(c.canary_terminal, c.canary_events),
            rate(c.baseline_terminal, c.baseline_events),
        ),
    ]
    .into_iter()
    .filter(|(_, canary, baseline)| *canary > baseline + c.margin_percent)
    .map(|(name, _, _)| name)
    .collect();
    if worse.is_empty() {
        Decision::Promote(format!("no worse than the active version: {figures}"))
    } else {
        Decision::RollBack(format!(
            "{} failure rate worse than the active version's by more than the margin: {figures}",
            worse.join(" and ")
        ))
    }
}

#[cfg(test)]
mod rule {
    use super::*;

    fn canary(counts: [i64; 6]) -> RunningCanary {
        let [be, bt, bf, ce, ct, cf] = counts;
        RunningCanary {
            id: 1,
            share_percent: 10,
            min_events: 100,
            margin_percent: 5.0,
            started_at: chrono::Utc::now(),
            started_by: "t".into(),
            digest: String::new(),
            version_label: None,
            baseline_events: be,
            baseline_transient: bt,
            baseline_terminal: bf,
            canary_events: ce,
            canary_transient: ct,
            canary_terminal: cf,
        }
    }

    #[test]
    fn a_canary_is_not_decided_before_min_events() {
        assert_eq!(decide(&canary([900, 0, 0, 99, 99, 0])), Decision::Wait);
    }

    #[test]
    fn a_canary_no_worse_within_the_margin_is_promoted() {
        // 4 % terminal against 0 %: within the 5-point margin.
        assert!(matches!(
            decide(&canary([900, 0, 0, 100, 0, 4])),
            Decision::Promote(_)
        ));
    }

    #[test]
    fn a_canary_failing_thirty_percent_is_rolled_back_naming_the_rate() {
        let Decision::RollBack(why) = decide(&canary([900, 9, 0, 100, 0, 30])) else {
            panic!("rolled back");
        };
        assert!(why.starts_with("terminal failure rate worse"), "{why}");
        assert!(why.contains("terminal 30.0%"), "{why}");
    }

    #[test]
    fn an_aggregate_stays_on_one_side_and_the_share_is_about_right() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("agg-{i}")).collect();
        let canary = ids.iter().filter(|id| is_canary_side(id, 10)).count();
        assert!((800..1200).contains(&canary), "{canary} of 10000 at 10 %");
        for id in &ids {
            assert_eq!(is_canary_side(id, 10), is_canary_side(id, 10));
            // A larger share keeps every aggregate the smaller one had.
            assert!(!is_canary_side(id, 10) || is_canary_side(id, 50));
        }
    }
}
