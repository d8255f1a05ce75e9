//! Every metric the host exports, defined once. All carry a `projection` label.
//!
//! Counters move when a batch settles, from the rows the settle statement actually changed (a
//! fenced-off late ack counts nothing). Gauges that need SQL (lag, oldest age, in-flight, stuck,
//! blocked, and the latest rebuild) are refreshed on an interval, never per scrape, by two queries
//! (`projector_store::outbox::status::gauges`, `projector_store::rebuilds::latest_finished`).
//!
//! `reason` labels are bounded per projection: the host's own reasons ([`HOST_REASONS`]) are
//! always labelled; of the reasons plugins choose, the first
//! [`MAX_REASON_LABELS`](projector_runtime::limits::MAX_REASON_LABELS) distinct ones per projection
//! (since the host started) get their own label and any further one is counted as
//! [`OTHER_REASON`]. The stored `error_reason` always keeps the real reason.

use projector_store::outbox::settle::Settled;
use projector_store::outbox::{ClaimedEvent, Verdict};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The `reason` label of failures beyond a projection's distinct-reason bound.
pub const OTHER_REASON: &str = "other";

/// Reasons the host itself assigns: always their own label, never counted against the bound
/// (add a new host reason here).
pub const HOST_REASONS: &[&str] = &[
    "plugin_trap",
    "plugin_oom",
    "plugin_timeout",
    "plugin_contract",
    "plugin_instantiate",
    "host_panic",
    "sql_connection",
    "sql_aborted",
    "payload_too_large",
    "headers_too_large",
    "event_type_too_long",
    "aggregate_type_too_long",
    "aggregate_id_too_long",
    "unknown_event_type",
    "sql_forbidden_statement",
    "sql_result_too_large",
    "sql_timeout",
];

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    /// Unfinished events (pending + processing).
    pub lag: IntGaugeVec,
    /// Age of the oldest unfinished event.
    pub oldest_age: GaugeVec,
    /// Events processing under a live lease.
    pub inflight: IntGaugeVec,
    /// Events processing under an expired lease.
    pub stuck: IntGaugeVec,
    /// Pending events behind a failed event of their aggregate.
    pub blocked: IntGaugeVec,
    /// Retries scheduled, by reason.
    pub retry_scheduled: IntCounterVec,
    /// Events that became `failed`, by reason.
    pub terminal_failed: IntCounterVec,
    /// `<prefix>_success_total`: events settled `done`.
    pub dispatch_success: IntCounterVec,
    /// `<prefix>_failure_total`: failed delivery attempts (transient or deterministic).
    pub dispatch_failure: IntCounterVec,
    /// `<prefix>_retry_total`: retries scheduled.
    pub dispatch_retry: IntCounterVec,
    /// `<prefix>_active`: 1 while the projection's claim loops are alive.
    pub dispatch_active: IntGaugeVec,
    /// `<prefix>_total{result,event_type}`: settled events by result (`success`, `retry`, `failed`).
    pub dispatch_total: IntCounterVec,
    /// Stuck rows taken over from an expired lease.
    pub reclaimed: IntCounterVec,
    /// Outcomes by plugin version (`outcome`: `success`, `transient`, `terminal`).
    pub by_version: IntCounterVec,
    /// Plugin calls that trapped.
    pub plugin_traps: IntCounterVec,
    /// Batch duration, claim to settle.
    pub batch_duration: HistogramVec,
    /// Plugin `handle` call duration (all calls of a batch, bisection included).
    pub plugin_call_duration: HistogramVec,
    /// `done` rows deleted by retention.
    pub pruned: IntCounterVec,
    /// How long the latest finished rebuild took.
    pub rebuild_duration: GaugeVec,
    /// When the latest rebuild finished (Unix time).
    pub rebuild_last_finished: GaugeVec,
    /// 1 if the latest finished rebuild succeeded, else 0.
    pub rebuild_last_success: IntGaugeVec,
    /// Plugin log lines dropped by the per-projection rate limit.
    pub plugin_log_dropped: IntCounterVec,
    /// Per projection, the plugin-chosen reasons that have a label of their own.
    reason_labels: Mutex<HashMap<String, HashSet<String>>>,
}

fn gauge(r: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["projection"]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["projection"]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets),
        &["projection"],
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// Registers every metric; dispatcher metrics are named `<prefix>_...`.
    pub fn new(prefix: &str) -> Self {
        let r = Registry::new();
        let p = |s: &str| format!("{prefix}_{s}");
        Metrics {
            lag: int_gauge(
                &r,
                "outbox_lag_events",
                "Unfinished events (pending or processing).",
            ),
            oldest_age: gauge(
                &r,
                "outbox_oldest_age_seconds",
                "Age of the oldest unfinished event.",
            ),
            inflight: int_gauge(
                &r,
                "outbox_inflight_events",
                "Events being processed under a live lease.",
            ),
            stuck: int_gauge(
                &r,
                "outbox_stuck_processing_events",
                "Events processing under an expired lease.",
            ),
            blocked: int_gauge(
                &r,
                "outbox_blocked_events",
                "Pending events held back by a failed earlier event of their aggregate.",
            ),
            retry_scheduled: counter(
                &r,
                "outbox_retry_scheduled_total",
                "Retries scheduled after a transient failure.",
                &["projection", "reason"],
            ),
            terminal_failed: counter(
                &r,
                "outbox_terminal_failed_total",
                "Events that became failed (terminal).",
                &["projection", "reason"],
            ),
            dispatch_success: counter(
                &r,
                &p("success_total"),
                "Events delivered (done).",
                &["projection"],
            ),
            dispatch_failure: counter(
                &r,
                &p("failure_total"),
                "Failed delivery attempts (transient or deterministic).",
                &["projection"],
            ),
            dispatch_retry: counter(&r, &p("retry_total"), "Retries scheduled.", &["projection"]),
            dispatch_active: int_gauge(
                &r,
                &p("active"),
                "1 while the projection's claim loops are running.",
            ),
            dispatch_total: counter(
                &r,
                &p("total"),
                "Settled events by result and event type.",
                &["projection", "result", "event_type"],
            ),
            reclaimed: counter(
                &r,
                "projector_reclaimed_total",
                "Events taken over from an expired lease.",
                &["projection"],
            ),
            by_version: counter(
                &r,
                "projector_version_outcomes_total",
                "Outcomes recorded per plugin version (the label stamped on events): success, transient (retried) or terminal (failed).",
                &["projection", "version", "outcome"],
            ),
            plugin_traps: counter(
                &r,
                "projector_plugin_traps_total",
                "Plugin calls that trapped.",
                &["projection"],
            ),
            batch_duration: histogram(
                &r,
                "projector_batch_duration_seconds",
                "Batch duration from claim to settle.",
            ),
            plugin_call_duration: histogram(
                &r,
                "projector_plugin_call_duration_seconds",
                "Duration of the plugin calls of one batch.",
            ),
            pruned: counter(
                &r,
                "outbox_pruned_total",
                "Done rows deleted by retention.",
                &["projection"],
            ),
            rebuild_duration: gauge(
                &r,
                "projector_rebuild_duration_seconds",
                "Duration of the latest finished rebuild.",
            ),
            rebuild_last_finished: gauge(
                &r,
                "projector_rebuild_last_finished_timestamp_seconds",
                "When the latest rebuild finished (Unix time).",
            ),
            rebuild_last_success: int_gauge(
                &r,
                "projector_rebuild_last_success",
                "1 if the latest finished rebuild succeeded, else 0.",
            ),
            plugin_log_dropped: counter(
                &r,
                "projector_plugin_log_dropped_total",
                "Plugin log lines dropped by the per-projection rate limit.",
                &["projection"],
            ),
            reason_labels: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// Makes every per-projection series exist (at zero) so dashboards see the projection at once.
    pub fn init_projection(&self, projection: &str) {
        for g in [
            &self.lag,
            &self.inflight,
            &self.stuck,
            &self.blocked,
            &self.dispatch_active,
        ] {
            g.with_label_values(&[projection]).set(0);
        }
        self.oldest_age.with_label_values(&[projection]).set(0.0);
        for c in [
            &self.dispatch_success,
            &self.dispatch_failure,
            &self.dispatch_retry,
            &self.reclaimed,
            &self.plugin_traps,
            &self.plugin_log_dropped,
        ] {
            c.with_label_values(&[projection]);
        }
    }

    /// The `reason` label for `reason` in `projection`: itself for a host reason or one of the
    /// projection's first [`MAX_REASON_LABELS`](projector_runtime::limits::MAX_REASON_LABELS)
    /// distinct plugin reasons, else [`OTHER_REASON`].
    pub fn reason_label<'a>(&self, projection: &str, reason: &'a str) -> &'a str {
        if HOST_REASONS.contains(&reason) {
            return reason;
        }
        let mut labels = self.reason_labels.lock().unwrap_or_else(|p| p.into_inner());
        let seen = labels.entry(projection.to_owned()).or_default();
        if seen.contains(reason) {
            return reason;
        }
        if seen.len() < projector_runtime::limits::MAX_REASON_LABELS {
            seen.insert(reason.to_owned());
            return reason;
        }
        OTHER_REASON
    }

    /// Counts one settled batch. `settled` holds only rows the settle statement changed.
    pub fn record_settled(
        &self,
        projection: &str,
        events: &[ClaimedEvent],
        verdicts: &[Verdict],
        settled: &[Settled],
    ) {
        let by_seq: HashMap<i64, (&ClaimedEvent, &Verdict)> = events
            .iter()
            .zip(verdicts)
            .map(|(e, v)| (e.seq, (e, v)))
            .collect();
        for s in settled {
            let Some((event, verdict)) = by_seq.get(&s.seq) else {
                continue;
            };
            let reason = match verdict {
                // Handed back untried: not a delivery, counted when it is delivered.
                Verdict::Deferred => continue,
                Verdict::Success => "",
                Verdict::Transient { reason, .. } | Verdict::Deterministic { reason, .. } => {
                    self.reason_label(projection, reason)
                }
            };
            if !matches!(verdict, Verdict::Success) {
                self.dispatch_failure.with_label_values(&[projection]).inc();
            }
            let result = match s.status.as_str() {
                "done" => {
                    self.dispatch_success.with_label_values(&[projection]).inc();
                    "success"
                }
                "pending" => {
                    self.retry_scheduled
                        .with_label_values(&[projection, reason])
                        .inc();
                    self.dispatch_retry.with_label_values(&[projection]).inc();
                    "retry"
                }
                _ => {
                    self.terminal_failed
                        .with_label_values(&[projection, reason])
                        .inc();
                    "failed"
                }
            };
            self.dispatch_total
                .with_label_values(&[projection, result, &event.event_type])
                .inc();
        }
    }

    /// Counts one settled (sub-)batch's outcomes under the `version` that produced them. The
    /// `version` label takes one value per version a host ran, so it stays bounded.
    pub fn record_version(
        &self,
        projection: &str,
        version: &str,
        outcomes: projector_store::versions::SideOutcomes,
    ) {
        let success = outcomes.events - outcomes.transient - outcomes.terminal;
        for (outcome, n) in [
            ("success", success),
            ("transient", outcomes.transient),
            ("terminal", outcomes.terminal),
        ] {
            if n > 0 {
                self.by_version
                    .with_label_values(&[projection, version, outcome])
                    .inc_by(n as u64);
            }
        }
    }

    /// Refreshes the SQL-backed gauges for `projections` with one query.
    pub async fn refresh(
        &self,
        pool: &PgPool,
        projections: &[String],
        every: std::time::Duration,
    ) -> sqlx::Result<()> {
        let rows = projector_store::outbox::status::gauges(pool, projections, every).await?;
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for g in &rows {
            let projection = g.projection.as_str();
            seen.insert(projection, ());
            self.lag.with_label_values(&[projection]).set(g.lag);
            self.inflight
                .with_label_values(&[projection])
                .set(g.inflight);
            self.stuck.with_label_values(&[projection]).set(g.stuck);
            self.blocked.with_label_values(&[projection]).set(g.blocked);
            self.oldest_age
                .with_label_values(&[projection])
                .set(g.oldest_age_seconds);
        }
        for projection in projections
            .iter()
            .filter(|p| !seen.contains_key(p.as_str()))
        {
            for g in [&self.lag, &self.inflight, &self.stuck, &self.blocked] {
                g.with_label_values(&[projection]).set(0);
            }
            self.oldest_age.with_label_values(&[projection]).set(0.0);
        }
        // Rebuilds may run in another process: `projector rebuild` records them in the database.
        for r in projector_store::rebuilds::latest_finished(pool, projections).await? {
            let projection = r.projection.as_str();
            self.rebuild_duration
                .with_label_values(&[projection])
                .set(r.duration_seconds);
            self.rebuild_last_finished
                .with_label_values(&[projection])
                .set(r.finished_at_seconds);
            self.rebuild_last_success
                .with_label_values(&[projection])
                .set(i64::from(r.succeeded));
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}
