//! The `log` capability: a plugin's records go to the host's structured log, tagged with the
//! projection, worker, claim batch and (when the plugin names one) event.
//!
//! Bounded (numbers in [`crate::limits`]): a line is cut to `LOG_LINE_MAX_BYTES`, and each
//! projection's lines pass one token bucket ([`LogBudget`], shared by all its instances and
//! versions in this host). A line over the rate is dropped and counted in
//! `projector_plugin_log_dropped_total{projection}` at once; the host logs `plugin log lines
//! dropped (rate limit)` (target `projector::plugin`, field `dropped` = lines since the last such
//! record) from a reporter thread ([`DropReporter`]) that looks every second, at most once per
//! `LOG_DROP_REPORT_INTERVAL` per projection: never one record per line, and every drop is
//! reported within that interval even if the plugin goes quiet.
//! Where lines go is a [`LogBackend`]: the rate-limited structured log ([`LogBudget`]) in
//! `projector run`; the test kit's in-memory list, which gets the cut lines without rate limit.

pub use crate::bindings::projector::plugin::log::Level;
use crate::bindings::projector::plugin::log::{self as wit, Host};
use crate::capability::{BatchScope, Capability};
use crate::limits;
use projector_core::spec::Grants;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

/// The `log` capability.
pub struct Log;

/// Where a plugin's (already cut) log lines go.
pub trait LogBackend: Send + Sync {
    /// One line, at `level`, about `event_id` when the plugin names one.
    fn log(&self, scope: &BatchScope, level: Level, event_id: Option<&str>, message: &str);
}

/// An instance's `log` context.
pub struct LogCtx {
    backend: Arc<dyn LogBackend>,
}

impl LogCtx {
    /// Lines go to `backend`.
    pub fn new(backend: Arc<dyn LogBackend>) -> Self {
        LogCtx { backend }
    }
}

/// What `log` calls see: the context and the batch.
pub struct LogView<'a> {
    /// The instance's context.
    pub ctx: &'a mut LogCtx,
    /// The batch being handled.
    pub scope: &'a BatchScope,
}

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

impl Capability for Log {
    const NAME: &'static str = "log";
    const INTERFACE: &'static str = "projector:plugin/log@";
    type Data<'a> = LogView<'a>;

    fn granted(_: &Grants) -> bool {
        true
    }

    fn add_to_linker<T: 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> LogView<'_>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, Log>(linker, get)
    }
}

macro_rules! emit {
    ($lvl:expr, $budget:expr, $scope:expr, $event_id:expr, $msg:expr) => {
        // A line below the log filter costs nothing of the budget.
        if tracing::enabled!(target: "plugin", $lvl) && $budget.admit() {
            tracing::event!(
                target: "plugin",
                $lvl,
                projection = %$scope.projection,
                worker_id = %$scope.worker_id,
                claim_batch_id = %$scope.claim_batch_id.map(|b| b.to_string()).unwrap_or_default(),
                event_id = $event_id.unwrap_or(""),
                "{}",
                $msg
            )
        }
    };
}

/// One projection's plugin log rate limit: a token bucket and the dropped-line count.
pub struct LogBudget {
    projection: String,
    bucket: Mutex<Bucket>,
    dropped: prometheus::IntCounter,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    /// Lines dropped since the last report.
    unreported: u64,
    reported_at: Option<Instant>,
}

impl LogBudget {
    /// A full bucket for `projection`; drops are counted in `dropped`.
    pub fn new(projection: &str, dropped: prometheus::IntCounter) -> Self {
        LogBudget {
            projection: projection.to_owned(),
            bucket: Mutex::new(Bucket {
                tokens: limits::LOG_BURST_LINES,
                refilled_at: Instant::now(),
                unreported: 0,
                reported_at: None,
            }),
            dropped,
        }
    }

    /// Whether one more line may be emitted now (taking a token if so; counting a drop if not).
    fn admit(&self) -> bool {
        let now = Instant::now();
        let admitted = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = now.saturating_duration_since(b.refilled_at).as_secs_f64();
            b.tokens =
                (b.tokens + elapsed * limits::LOG_LINES_PER_SECOND).min(limits::LOG_BURST_LINES);
            b.refilled_at = now;
            let admitted = b.tokens >= 1.0;
            if admitted {
                b.tokens -= 1.0;
            } else {
                b.unreported += 1;
            }
            admitted
        };
        if !admitted {
            self.dropped.inc();
        }
        admitted
    }

    /// Logs the drops not yet reported, if there are any and the last report is old enough.
    fn report(&self, now: Instant) {
        let dropped = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let due = b.reported_at.is_none_or(|at| {
                now.saturating_duration_since(at) >= limits::LOG_DROP_REPORT_INTERVAL
            });
            if b.unreported == 0 || !due {
                return;
            }
            b.reported_at = Some(now);
            std::mem::take(&mut b.unreported)
        };
        tracing::warn!(
            target: "projector::plugin",
            projection = %self.projection,
            dropped,
            lines_per_second = limits::LOG_LINES_PER_SECOND,
            burst = limits::LOG_BURST_LINES,
            "plugin log lines dropped (rate limit)"
        );
    }
}

/// Every projection's [`LogBudget`] in one runtime, by projection name.
pub type LogBudgets = Mutex<BTreeMap<String, Arc<LogBudget>>>;

/// A thread that reports each projection's dropped log lines (see the module doc) until the
/// budgets are gone or it is dropped.
pub struct DropReporter {
    stop: Arc<AtomicBool>,
}

impl DropReporter {
    /// Starts the reporter thread over `budgets`.
    pub fn start(budgets: Weak<LogBudgets>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("projector-log-drops".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(budgets) = budgets.upgrade() else {
                        return;
                    };
                    let all: Vec<Arc<LogBudget>> = budgets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    let now = Instant::now();
                    for budget in all {
                        budget.report(now);
                    }
                }
            })
            .expect("spawning the log drop reporter thread");
        DropReporter { stop }
    }
}

impl Drop for DropReporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Host for LogView<'_> {
    fn log(&mut self, level: Level, event_id: Option<String>, message: String) {
        let message = limits::truncate(message, limits::LOG_LINE_MAX_BYTES);
        self.ctx
            .backend
            .log(self.scope, level, event_id.as_deref(), &message);
    }
}

/// The host's log: the structured log, through the projection's rate limit.
impl LogBackend for LogBudget {
    fn log(&self, scope: &BatchScope, level: Level, event_id: Option<&str>, message: &str) {
        match level {
            Level::Trace => emit!(tracing::Level::TRACE, self, scope, event_id, message),
            Level::Debug => emit!(tracing::Level::DEBUG, self, scope, event_id, message),
            Level::Info => emit!(tracing::Level::INFO, self, scope, event_id, message),
            Level::Warn => emit!(tracing::Level::WARN, self, scope, event_id, message),
            Level::Error => emit!(tracing::Level::ERROR, self, scope, event_id, message),
        }
    }
}
