//! One claim loop: claim a batch, renew its lease while the plugin works, settle the outcomes,
//! repeat. `OUTBOX_CONCURRENCY` of these run per projection in each host.
//!
//! Invariants:
//! - A loop claims only while the host is not shutting down; a batch it has claimed is always
//!   either settled or (at shutdown, past the grace period) released by the service.
//! - The lease is renewed every third of its length while the batch runs, and never past the
//!   batch's `max_processing` bound; the plugin call is interrupted at that bound.
//! - The loops of a projection in one host claim one at a time (`claim_turn`), and ordered claims
//!   of a projection take turns across hosts too (see `projector_store::outbox::claim`): two
//!   claims at once would see the same candidates and the second would get none of them.
//! - When a claim comes back empty the loop sleeps until a NOTIFY for its projection, a settle
//!   of another loop of the projection in this host that finished events (their aggregates' next
//!   events may now be claimed), the poll interval, or shutdown, whichever comes first. The
//!   wake-up is armed *before* the claim so a notification that arrives during the claim is not
//!   lost.
//! - A loop also wakes when a retry it scheduled falls due: it remembers every retry time its
//!   settles wrote (up to [`RetryWakeups::CAP`], the latest dropped first; the poll covers those),
//!   not only the last batch's earliest, so a retry is not left to the poll because a later batch
//!   came in between.
//! - While a canary runs, a claimed batch is split by aggregate ([`crate::canary::split`]) and
//!   its parts run one after the other under the batch's one lease, each on its own version and
//!   handler, each settled stamped with its version; their outcomes are added to the canary's
//!   counters.

use crate::metrics::Metrics;
use crate::plugin_versions::ActiveSlot;
use crate::settings::ProjectionSpec;
use projector_runtime::dispatch::dispatch;
use projector_runtime::Handler;
use projector_store::outbox::{claim, lease, settle, Claim};
use projector_store::versions::SideOutcomes;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

/// What one loop needs.
pub struct Worker {
    /// The projection.
    pub spec: Arc<ProjectionSpec>,
    /// Its plugin version.
    pub plugin: Arc<ActiveSlot>,
    /// The shared pool.
    pub pool: PgPool,
    /// For `sql` projections: the pool logged in as the projection's role.
    pub sql_pool: Option<PgPool>,
    /// This host's worker id.
    pub worker_id: Arc<str>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Woken by NOTIFY for this projection.
    pub wake: Arc<Notify>,
    /// Held while claiming: the loops of one projection in one host claim one after the other.
    /// Ordered claims take turns in the database anyway (`claim_turn.sql`); waiting here instead
    /// keeps a second pooled connection from waiting there.
    pub claim_turn: Arc<tokio::sync::Mutex<()>>,
    /// Fallback polling interval.
    pub poll_interval: Duration,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Runs until shutdown.
    pub async fn run(self) {
        let projection = self.spec.name.clone();
        let mut handler = Some(Handler::new(self.plugin.current()));
        // While a canary runs, its version's handler (the active one's stays in `handler`).
        let mut canary_handler: Option<Handler> = None;
        let mut failures: u32 = 0;
        // The retries this loop scheduled: waking when one falls due beats waiting for the poll.
        let mut retries = RetryWakeups::default();
        while !self.shutdown.is_cancelled() {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = {
                let _turn = self.claim_turn.lock().await;
                claim::claim(&self.pool, &self.spec, &self.worker_id).await
            };
            let idle = match claimed {
                Ok(claim) if !claim.events.is_empty() => {
                    failures = 0;
                    // The versions are read once per batch: a swap takes effect at the next batch.
                    let current = self.plugin.current();
                    let canary = self.plugin.canary();
                    let span = crate::telemetry::batch_span(
                        &claim,
                        &self.worker_id,
                        &current.version_label,
                    );
                    // Every part's lease renewal covers the whole claim: a part waiting for the
                    // one before it must not lapse meanwhile.
                    let held: Vec<i64> = claim.events.iter().map(|e| e.seq).collect();
                    // Without a canary, one part: the whole claim on the active version.
                    for part in crate::canary::split(claim, current, canary.as_deref()) {
                        let kept = match part.canary_side {
                            true => &mut canary_handler,
                            false => &mut handler,
                        };
                        let handler_in = match kept.take() {
                            Some(h) if Arc::ptr_eq(h.plugin(), &part.plugin) => h,
                            _ => Handler::new(part.plugin),
                        };
                        let (h, retry_in, outcomes) = self
                            .process(part.claim, handler_in, held.clone())
                            .instrument(span.clone())
                            .await;
                        *kept = Some(h);
                        retries.schedule(tokio::time::Instant::now(), retry_in);
                        if let Some(id) = part.canary_id {
                            let counted = projector_store::versions::count_canary(
                                &self.pool,
                                id,
                                part.canary_side,
                                outcomes,
                            );
                            if let Err(e) = counted.await {
                                warn!(projection = %projection, error = %e, "cannot count the canary's outcomes");
                            }
                        }
                    }
                    false
                }
                Ok(_) => {
                    failures = 0;
                    true
                }
                Err(e) => {
                    failures += 1;
                    error!(projection = %projection, error = %e, "claim failed");
                    true
                }
            };
            if idle {
                // After repeated database errors back off up to 10 poll intervals.
                let wait = retries.wait(
                    tokio::time::Instant::now(),
                    self.poll_interval * failures.clamp(1, 10),
                );
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
        }
        debug!(projection = %projection, "claim loop stopped");
    }

    /// Handles one claimed batch (or a canary's part of one) end to end, renewing the lease of
    /// `held` (the seqs of the whole claim) meanwhile; gives the handler back with the retry
    /// delays it scheduled and the outcomes it recorded.
    async fn process(
        &self,
        claim: Claim,
        handler: Handler,
        held: Vec<i64>,
    ) -> (Handler, Vec<Duration>, SideOutcomes) {
        let started = Instant::now();
        let plugin = handler.plugin().clone();
        let projection = self.spec.name.as_str();
        let tuning = &self.spec.tuning;
        let reclaimed = claim.events.iter().filter(|e| e.reclaimed).count();
        if reclaimed > 0 {
            self.metrics
                .reclaimed
                .with_label_values(&[projection])
                .inc_by(reclaimed as u64);
            info!(projection, claim_batch_id = %claim.batch_id, reclaimed, "reclaimed events whose lease had expired");
        }
        debug!(projection, claim_batch_id = %claim.batch_id, size = claim.events.len(), "claimed batch");

        let renewer = self.spawn_lease_renewal(claim.batch_id, held, started);
        let budget = tuning.max_processing;
        let claim = Arc::new(claim);
        let call_started = Instant::now();
        // A sql projection's writes and its outcomes share one transaction on its own role.
        let tx = match &self.sql_pool {
            Some(pool) => match pool.begin().await {
                Ok(tx) => Some(tx),
                Err(e) => {
                    warn!(projection, error = %e, "cannot open the projection's transaction; releasing the batch");
                    renewer.abort();
                    if let Err(e) =
                        lease::release(&self.pool, &self.worker_id, Some(claim.batch_id)).await
                    {
                        warn!(projection, error = %e, "release failed; the batch will be reclaimed after its lease");
                    }
                    return (handler, vec![self.poll_interval], SideOutcomes::default());
                }
            },
            None => None,
        };
        // The host answers for events the plugin must not see (too large, undeclared type).
        let dispatched = dispatch(handler, &claim, tuning, tx, budget, &self.pool).await;
        let (mut handler, mut verdicts, report, tx) = match dispatched.panicked {
            None => (
                dispatched.handler,
                dispatched.verdicts,
                dispatched.report,
                dispatched.tx,
            ),
            Some(e) => {
                // The handler itself panicked (a host bug, not a plugin trap): charge the
                // batch as transient and start over with a fresh handler.
                error!(projection, error = %e, "plugin handler panicked");
                let v = vec![
                    projector_store::outbox::Verdict::transient("host_panic", e);
                    claim.events.len()
                ];
                (None, v, Default::default(), None)
            }
        };
        self.metrics
            .plugin_call_duration
            .with_label_values(&[projection])
            .observe(call_started.elapsed().as_secs_f64());
        if report.traps > 0 {
            self.metrics
                .plugin_traps
                .with_label_values(&[projection])
                .inc_by(report.traps.into());
            warn!(
                traps = report.traps,
                calls = report.calls,
                "plugin trapped; batch bisected"
            );
        }
        if report.contract_violations > 0 {
            warn!(
                calls = report.calls,
                "plugin returned the wrong number of outcomes; batch bisected"
            );
        }
        if report.timed_out {
            warn!(
                budget_s = budget.as_secs_f64(),
                "plugin call interrupted at the batch deadline"
            );
        }
        renewer.abort();
        // Runs are settled up to their first non-success (a no-op with one event per aggregate).
        projector_store::outbox::defer_after_failures(&claim.events, &mut verdicts);

        let version = plugin.version_label.clone();
        let settled = match tx {
            Some(Ok(tx)) => {
                self.settle_in_transaction(tx, &claim, &verdicts, &version)
                    .await
            }
            Some(Err(e)) => {
                warn!(error = %e, "the projection's transaction failed; nothing of the batch was committed");
                // A plugin statement stalled and the host ended its backend: the event it ran
                // for is known (`sql_timeout`) and is settled failed now rather than retried
                // forever after each lease; nothing else was written, so no event may be `done`.
                let stalled = verdicts.iter().any(
                    |v| matches!(v, projector_store::outbox::Verdict::Deterministic { reason, .. } if reason == "sql_timeout"),
                );
                if stalled {
                    let unwritten: Vec<_> = verdicts
                        .iter()
                        .map(|v| match v {
                            projector_store::outbox::Verdict::Success => projector_store::outbox::Verdict::transient(
                                "sql_connection",
                                "the batch's transaction was ended before commit; nothing was written",
                            ),
                            other => other.clone(),
                        })
                        .collect();
                    verdicts = unwritten;
                    projector_store::outbox::defer_after_failures(&claim.events, &mut verdicts);
                    self.settle_with_retry(&claim, &verdicts, &version).await
                } else {
                    None
                }
            }
            None => self.settle_with_retry(&claim, &verdicts, &version).await,
        };
        crate::telemetry::record_events(&claim, &verdicts, settled.as_deref());
        let mut retry_in = Vec::new();
        let mut outcomes = SideOutcomes::default();
        match settled {
            Some(settled) => {
                // Finishing an event makes its aggregate's next event claimable: loops of this
                // projection asleep after an empty claim (everything due was held by this batch)
                // take it now, not at the next poll.
                if settled.iter().any(|s| s.status == "done") {
                    self.wake.notify_waiters();
                }
                retry_in = settled.iter().filter_map(|s| s.retry_in).collect();
                outcomes = crate::canary::outcomes(&claim.events, &verdicts, &settled);
                self.metrics.record_version(projection, &version, outcomes);
                if settled.len() < claim.events.len() {
                    warn!(projection, claim_batch_id = %claim.batch_id, held = settled.len(), claimed = claim.events.len(),
                        "lease lost before settling: outcomes of rows reclaimed elsewhere were discarded");
                }
                self.metrics
                    .record_settled(projection, &claim.events, &verdicts, &settled);
                self.log_retries(&claim, &verdicts, &settled);
            }
            None => {
                warn!(projection, claim_batch_id = %claim.batch_id, "could not settle batch; its rows will be reclaimed after the lease")
            }
        }
        self.metrics
            .batch_duration
            .with_label_values(&[projection])
            .observe(started.elapsed().as_secs_f64());
        let handler = handler.take().unwrap_or_else(|| Handler::new(plugin));
        (handler, retry_in, outcomes)
    }

    /// Settles, retrying briefly on database errors within the lease: giving up only means the
    /// rows are reclaimed and handled again, which idempotent plugins tolerate.
    async fn settle_with_retry(
        &self,
        claim: &Claim,
        verdicts: &[projector_store::outbox::Verdict],
        version: &str,
    ) -> Option<Vec<settle::Settled>> {
        let give_up = Instant::now() + self.spec.tuning.lease;
        let mut delay = Duration::from_millis(50);
        loop {
            match settle::settle(&self.pool, claim, verdicts, &self.spec.tuning, version).await {
                Ok(s) => return Some(s),
                Err(e) if Instant::now() + delay < give_up => {
                    warn!(projection = %self.spec.name, claim_batch_id = %claim.batch_id, error = %e, "settle failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    error!(projection = %self.spec.name, claim_batch_id = %claim.batch_id, error = %e, "settle failed");
                    return None;
                }
            }
        }
    }

    /// Records the outcomes on the projection's own transaction and commits it with the plugin's
    /// writes. If the claim was lost meanwhile (any row reclaimed elsewhere) nothing is
    /// committed: the new holder will apply those events, and exactly once.
    async fn settle_in_transaction(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        claim: &Claim,
        verdicts: &[projector_store::outbox::Verdict],
        version: &str,
    ) -> Option<Vec<settle::Settled>> {
        let settled = settle::settle_on(
            &mut tx,
            claim,
            verdicts,
            &self.spec.tuning,
            version,
            settle::Route::Function,
        )
        .await;
        let settled = match settled {
            Ok(s) if s.len() == claim.events.len() => s,
            Ok(s) => {
                warn!(
                    held = s.len(),
                    claimed = claim.events.len(),
                    "lease lost before settling: rolling back the batch's writes"
                );
                let _ = tx.rollback().await;
                return None;
            }
            Err(e) => {
                warn!(error = %e, "settling inside the projection's transaction failed; nothing committed");
                return None;
            }
        };
        match tx.commit().await {
            Ok(()) => Some(settled),
            Err(e) => {
                warn!(error = %e, "commit failed; nothing of the batch was recorded");
                None
            }
        }
    }

    fn log_retries(
        &self,
        claim: &Claim,
        verdicts: &[projector_store::outbox::Verdict],
        settled: &[settle::Settled],
    ) {
        use projector_store::outbox::Verdict;
        for s in settled {
            let Some(i) = claim.events.iter().position(|e| e.seq == s.seq) else {
                continue;
            };
            let event = &claim.events[i];
            match (&verdicts[i], s.status.as_str()) {
                (Verdict::Transient { reason, message }, "pending") => info!(
                    projection = %claim.projection, claim_batch_id = %claim.batch_id, event_id = %event.id,
                    attempt = s.attempts, reason = %reason, error = %message,
                    delay_ms = s.retry_in.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
                    "retry scheduled"
                ),
                (
                    Verdict::Transient { reason, message }
                    | Verdict::Deterministic { reason, message },
                    "failed",
                ) => warn!(
                    projection = %claim.projection, claim_batch_id = %claim.batch_id, event_id = %event.id,
                    attempt = s.attempts, reason = %reason, error = %message,
                    "event failed (terminal)"
                ),
                _ => {}
            }
        }
    }

    /// Renews the batch's lease every third of its length until aborted or the batch's
    /// `max_processing` bound is reached.
    fn spawn_lease_renewal(
        &self,
        batch_id: uuid::Uuid,
        seqs: Vec<i64>,
        started: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.pool.clone();
        let lease = self.spec.tuning.lease;
        let bound = started + self.spec.tuning.max_processing;
        let projection = self.spec.name.clone();
        tokio::spawn(async move {
            let every = lease / 3;
            loop {
                tokio::time::sleep(every).await;
                if Instant::now() >= bound {
                    warn!(projection = %projection, claim_batch_id = %batch_id, "batch exceeded OUTBOX_MAX_PROCESSING_SECONDS; lease no longer renewed");
                    return;
                }
                match lease::renew(&pool, batch_id, &seqs, lease).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        warn!(projection = %projection, claim_batch_id = %batch_id, error = %e, "lease renewal failed")
                    }
                }
            }
        })
    }
}

/// The retry times one loop's settles wrote, earliest first, so the loop wakes when each falls
/// due rather than at the next poll.
#[derive(Debug, Default)]
struct RetryWakeups {
    due: std::collections::BinaryHeap<std::cmp::Reverse<tokio::time::Instant>>,
}

impl RetryWakeups {
    /// At most this many times are remembered; beyond it the latest are dropped (the poll, or a
    /// wake-up for an earlier retry, picks those events up).
    const CAP: usize = 1024;

    /// Remembers retries `delays` after `now`.
    fn schedule(&mut self, now: tokio::time::Instant, delays: impl IntoIterator<Item = Duration>) {
        self.due
            .extend(delays.into_iter().map(|d| std::cmp::Reverse(now + d)));
        if self.due.len() > Self::CAP {
            let mut kept = std::mem::take(&mut self.due).into_sorted_vec();
            // Sorted ascending by `Reverse`: the latest times come first.
            let excess = kept.len() - Self::CAP;
            kept.drain(..excess);
            self.due = kept.into();
        }
    }

    /// How long an idle loop sleeps at `now`: zero when a retry has fallen due (forgetting
    /// every one that has: the claim that follows takes all due events), otherwise until the
    /// next retry or `poll`, whichever is sooner.
    fn wait(&mut self, now: tokio::time::Instant, poll: Duration) -> Duration {
        let mut fell_due = false;
        while self.due.peek().is_some_and(|r| r.0 <= now) {
            self.due.pop();
            fell_due = true;
        }
        match self.due.peek() {
            _ if fell_due => Duration::ZERO,
            Some(r) => poll.min(r.0 - now),
            None => poll,
        }
    }
}

#[cfg(test)]
mod retry_wakeups {
    use super::*;
    use tokio::time::Instant;

    const POLL: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_retry_scheduled_by_an_earlier_batch_still_wakes_the_loop() {
        let t0 = Instant::now();
        let mut r = RetryWakeups::default();
        r.schedule(t0, [ms(80), ms(30)]);
        // A later batch schedules a later retry: the earlier ones are kept.
        r.schedule(t0 + ms(10), [ms(150)]);
        assert_eq!(r.wait(t0 + ms(10), POLL), ms(20));
        assert_eq!(r.wait(t0 + ms(30), POLL), Duration::ZERO);
        // 30 ms fell due and was forgotten; 80 ms is next.
        assert_eq!(r.wait(t0 + ms(30), POLL), ms(50));
        assert_eq!(r.wait(t0 + ms(90), POLL), Duration::ZERO);
        assert_eq!(r.wait(t0 + ms(90), POLL), ms(70));
        assert_eq!(r.wait(t0 + ms(160), POLL), Duration::ZERO);
        assert_eq!(r.wait(t0 + ms(160), POLL), POLL);
    }

    #[test]
    fn retries_beyond_the_poll_wait_no_longer_than_the_poll() {
        let t0 = Instant::now();
        let mut r = RetryWakeups::default();
        r.schedule(t0, [ms(5_000)]);
        assert_eq!(r.wait(t0, POLL), POLL);
    }

    #[test]
    fn past_the_cap_the_latest_retries_are_dropped() {
        let t0 = Instant::now();
        let mut r = RetryWakeups::default();
        r.schedule(t0, (1..=RetryWakeups::CAP as u64 + 10).map(ms));
        assert_eq!(r.due.len(), RetryWakeups::CAP);
        assert_eq!(r.due.peek().map(|x| x.0), Some(t0 + ms(1)));
        let latest = r.due.iter().map(|x| x.0).max();
        assert_eq!(latest, Some(t0 + ms(RetryWakeups::CAP as u64)));
    }
}
