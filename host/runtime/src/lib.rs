//! projector's plugin runtime: loading a projection's component, instantiating it, calling it,
//! and the capabilities (`log`, `config`, `search`, `sql`) a plugin may import, each in its own
//! module, under the sandbox limits in [`limits`]. Depends on `projector-core` only: the
//! database roles the `sql` capability logs in as are `projector_store::sql_roles`' business,
//! handed in as a connection.
//!
//! Invariants:
//! - A plugin is compiled and validated once at load (it must be a component of the
//!   `projector:plugin` world and answer `describe()`); a bad file is a configuration error,
//!   and a file that is no component at all is told so by [`component_header`] before
//!   anything compiles it.
//! - A plugin sees only what the host grants: the `log` and `config` capabilities and a WASI
//!   context with no preopened directories, no environment, no sockets and no stdio.
//! - A trap, a timeout or a wrong number of outcomes never reaches the host as a crash: the
//!   instance is discarded (a trapped instance cannot be entered again), a fresh one is made
//!   from the pre-instantiated component, and [`Handler::handle`] bisects the batch so that only
//!   the event that traps is charged (`plugin_trap`, or `plugin_contract` for a wrong count).
//!   A timeout charges every event still unanswered (`plugin_timeout`): re-running them would
//!   only time out again.
//! - Instances live per claim loop, not per batch: a [`Handler`] keeps its instance (and store)
//!   across batches and replaces it after a trap, a timeout, an out-of-memory or a version
//!   change. That saves an instantiation per batch (microseconds from the `InstancePre`) but
//!   means a plugin may keep state between batches, and its memory cap covers the instance's
//!   whole life. Since instances are long-lived, the pooling allocator would buy little and is
//!   not used.

pub mod admission;
mod bindings;
pub mod cache;
pub mod capability;
pub mod component_header;
pub mod config;
pub mod dispatch;
pub mod limits;
pub mod log;
pub mod search;
pub mod sql;
pub mod sql_policy;

use projector_core::outbox::{sanitize_reason, Claim, ClaimedEvent, Verdict};
use projector_core::spec::ProjectionSpec;
pub use projector_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use bindings::projector::plugin::types::{Event as WitEvent, Outcome};
use bindings::{Plugin, PluginPre};
use capability::{BatchScope, Capability};

/// Per-instance state: each capability's own context, the batch in progress, and the sandbox's
/// limits. Capabilities see it only through the views [`Runtime::new`] links them with.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: limits::MemoryCap,
    scope: BatchScope,
    config: config::ConfigCtx,
    log: log::LogCtx,
    search: search::SearchCtx,
    sql: sql::SqlCtx,
}

/// Backends standing in for the host's log, Postgres and search cluster (the authoring test
/// kit's in-memory ones): a plugin loaded with them reaches none of those, and keeps everything
/// else of the runtime (loading, validation, limits, bisection on traps, reason sanitising).
#[derive(Clone)]
pub struct Backends {
    /// Where log lines go.
    pub log: Arc<dyn log::LogBackend>,
    /// Where statements go (used only when the projection is granted `sql`).
    pub sql: Arc<dyn sql::SqlBackend>,
    /// Where bulk requests go (used only when the projection is granted `search`).
    pub search: Arc<dyn search::SearchBackend>,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::projector::plugin::types::Host for PluginState {}

/// The engine and linker shared by every plugin in this host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    _ticker: limits::EpochTicker,
    search: Option<search::SearchClient>,
    cache: Option<cache::CompiledCache>,
    index_redirect: BTreeMap<String, String>,
    /// Each projection's log budget, shared by every version loaded through this runtime.
    log_budgets: Arc<log::LogBudgets>,
    _log_reporter: log::DropReporter,
    /// `projector_plugin_log_dropped_total`, when the host exports metrics.
    log_dropped: Option<prometheus::IntCounterVec>,
}

impl Runtime {
    /// A runtime with epoch interruption, the base capabilities and a sandboxed WASI.
    pub fn new() -> wasmtime::Result<Self> {
        let mut config = wasmtime::Config::new();
        limits::configure_engine(&mut config);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::projector::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        config::Config::add_to_linker(&mut linker, |s: &mut PluginState| &mut s.config)?;
        log::Log::add_to_linker(&mut linker, |s: &mut PluginState| log::LogView {
            ctx: &mut s.log,
            scope: &s.scope,
        })?;
        search::Search::add_to_linker(&mut linker, |s: &mut PluginState| search::SearchView {
            ctx: &mut s.search,
            scope: &s.scope,
        })?;
        sql::Sql::add_to_linker(&mut linker, |s: &mut PluginState| sql::SqlView {
            ctx: &mut s.sql,
            scope: &s.scope,
        })?;
        let _ticker = limits::EpochTicker::start(&engine);
        let log_budgets: Arc<log::LogBudgets> = Default::default();
        let _log_reporter = log::DropReporter::start(Arc::downgrade(&log_budgets));
        Ok(Runtime {
            engine,
            linker,
            _ticker,
            search: None,
            cache: None,
            index_redirect: BTreeMap::new(),
            log_budgets,
            _log_reporter,
            log_dropped: None,
        })
    }

    /// Counts the plugin log lines the rate limit drops in `counter` (labelled by projection).
    /// Applies to plugins loaded afterwards.
    pub fn with_log_dropped_counter(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.log_dropped = Some(counter);
        self
    }

    /// `projection`'s log budget, made on first use.
    fn log_budget(&self, projection: &str) -> Arc<log::LogBudget> {
        let mut budgets = self.log_budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets
            .entry(projection.to_owned())
            .or_insert_with(|| {
                let dropped = match &self.log_dropped {
                    Some(vec) => vec.with_label_values(&[projection]),
                    None => prometheus::IntCounter::new("unexported", "unexported")
                        .expect("valid counter"),
                };
                Arc::new(log::LogBudget::new(projection, dropped))
            })
            .clone()
    }

    /// Sends plugins' writes to a granted index named in `redirect` to the index it maps to
    /// (a zero-downtime rebuild writing its new index). Applies to plugins loaded afterwards.
    pub fn with_index_redirect(mut self, redirect: BTreeMap<String, String>) -> Self {
        self.index_redirect = redirect;
        self
    }

    /// The search cluster client, when one is configured.
    pub fn search_client(&self) -> Option<&search::SearchClient> {
        self.search.as_ref()
    }

    /// Keeps compiled components in `dir` (see [`cache`]); without it every start compiles.
    pub fn with_cache(mut self, dir: Option<&std::path::Path>) -> Self {
        self.cache = dir.and_then(|d| match cache::CompiledCache::new(d) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "compiled-component cache unavailable; compiling every start");
                None
            }
        });
        self
    }

    /// Connects the `search` capability to the cluster in `elastic` (when there is one). Call it
    /// inside the tokio runtime, before loading plugins.
    pub fn with_search(
        mut self,
        elastic: Option<&projector_core::spec::ElasticSettings>,
    ) -> Result<Self, Error> {
        self.search = elastic.map(search::SearchClient::new).transpose()?;
        Ok(self)
    }

    /// Compiles and validates a component (`origin` names it in errors) as `spec`'s plugin for
    /// this host's `worker_id`. Blocking: compiling takes a while.
    pub fn load_bytes(
        &self,
        spec: &ProjectionSpec,
        worker_id: &str,
        bytes: &[u8],
        origin: &std::path::Path,
    ) -> Result<Arc<LoadedPlugin>, Error> {
        self.load(spec, worker_id, bytes, origin, None)
    }

    /// Like [`Runtime::load_bytes`], but the plugin's `log`, `sql` and `search` calls go to
    /// `backends` (the authoring test kit's in-memory ones) instead of the host's log, Postgres
    /// and the search cluster.
    pub fn load_with_backends(
        &self,
        spec: &ProjectionSpec,
        bytes: &[u8],
        origin: &std::path::Path,
        backends: Backends,
    ) -> Result<Arc<LoadedPlugin>, Error> {
        self.load(spec, "test-kit", bytes, origin, Some(backends))
    }

    fn load(
        &self,
        spec: &ProjectionSpec,
        worker_id: &str,
        bytes: &[u8],
        origin: &std::path::Path,
        backends: Option<Backends>,
    ) -> Result<Arc<LoadedPlugin>, Error> {
        let fail = |message: String| Error::Plugin {
            path: origin.to_path_buf(),
            message,
        };
        if let Some(refusal) = component_header::refusal(bytes) {
            return Err(fail(refusal));
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let compiled = match &self.cache {
            Some(cache) => cache.load(&self.engine, bytes, &digest),
            None => Component::new(&self.engine, bytes).map(|c| (c, cache::Source::Compiled)),
        };
        let (component, source) = compiled.map_err(|e| {
            fail(format!(
                "not a valid WebAssembly component: {}",
                root_cause(&e)
            ))
        })?;
        check_grants(&component, &self.engine, spec).map_err(fail)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| fail(format!("imports what projector does not provide: {e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| {
            fail(format!(
                "does not export the projector:plugin/projection@0.1.0 interface: {e:#}"
            ))
        })?;
        let mut plugin = LoadedPlugin {
            projection: spec.name.as_str().into(),
            worker_id: worker_id.into(),
            memory_limit: spec.memory_limit,
            // A stand-in answers `sql` itself: no transaction, no tokio runtime needed.
            sql: (spec.grants.sql() && backends.is_none()).then(|| SqlGrant {
                runtime: tokio::runtime::Handle::current(),
                // Nine tenths of the batch budget: a statement the server ends still leaves the
                // plugin time to answer for its event.
                statement_timeout: spec.tuning.max_processing.mul_f64(0.9),
                limits: sql::ResultLimits {
                    max_rows: spec.grants.sql_max_rows(),
                    max_bytes: spec.grants.sql_max_result_bytes(),
                },
            }),
            config: Arc::new(spec.config.clone()),
            log: match &backends {
                Some(b) => b.log.clone(),
                None => self.log_budget(&spec.name),
            },
            engine: self.engine.clone(),
            search: match &backends {
                Some(b) => Some(b.search.clone()).filter(|_| spec.grants.search()),
                None => self.search.clone().filter(|_| spec.grants.search()).map(
                    |client| -> Arc<dyn search::SearchBackend> {
                        Arc::new(search::SearchAccess::new(
                            client,
                            spec.grants.clone(),
                            self.index_redirect.clone(),
                        ))
                    },
                ),
            },
            sql_stand_in: backends
                .as_ref()
                .filter(|_| spec.grants.sql())
                .map(|b| b.sql.clone()),
            pre,
            digest,
            info: PluginInfo::default(),
            version_label: String::new(),
            compiled: source,
            load_time: Duration::ZERO,
        };
        let mut instance = plugin
            .instantiate(None)
            .map_err(|e| fail(format!("cannot be instantiated: {e:#}")))?;
        instance
            .store
            .set_epoch_deadline(limits::deadline_ticks(limits::INSTANTIATE_DEADLINE));
        let info = instance
            .bindings
            .projector_plugin_projection()
            .call_describe(&mut instance.store)
            .map_err(|e| fail(format!("describe() failed: {}", root_cause(&e))))?;
        plugin.version_label = format!(
            "{}@{}+sha256:{}",
            info.name,
            info.version,
            &plugin.digest[..16]
        );
        plugin.info = PluginInfo {
            name: info.name,
            version: info.version,
            event_types: info.event_types,
        };
        plugin.load_time = started.elapsed();
        Ok(Arc::new(plugin))
    }
}

/// Every capability's import prefix, name and grant check.
const CAPABILITIES: &[(&str, &str, fn(&projector_core::spec::Grants) -> bool)] = &[
    (
        config::Config::INTERFACE,
        config::Config::NAME,
        config::Config::granted,
    ),
    (log::Log::INTERFACE, log::Log::NAME, log::Log::granted),
    (
        search::Search::INTERFACE,
        search::Search::NAME,
        search::Search::granted,
    ),
    (sql::Sql::INTERFACE, sql::Sql::NAME, sql::Sql::granted),
];

/// Refuses a component that imports a capability its projection was not granted.
fn check_grants(
    component: &Component,
    engine: &Engine,
    spec: &ProjectionSpec,
) -> Result<(), String> {
    for (name, _) in component.component_type().imports(engine) {
        for (prefix, capability, granted) in CAPABILITIES {
            if name.starts_with(prefix) && !granted(&spec.grants) {
                return Err(format!(
                    "imports the `{capability}` capability, which projection `{}` is not granted \
                     (grant it under [projection.grants] in the config file)",
                    spec.name
                ));
            }
        }
    }
    Ok(())
}

/// What a plugin said about itself in `describe()`.
#[derive(Debug, Clone, Default)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Event types it handles.
    pub event_types: Vec<String>,
}

/// What a `sql`-granted plugin's stores need to run statements. The transaction itself is lent
/// through a slot owned by each [`Handler`]: every claim loop has its own.
#[derive(Clone)]
struct SqlGrant {
    runtime: tokio::runtime::Handle,
    statement_timeout: Duration,
    limits: sql::ResultLimits,
}

/// A compiled, validated plugin version, ready to instantiate.
pub struct LoadedPlugin {
    sql: Option<SqlGrant>,
    /// Memory budget per instance (all memories and tables), bytes.
    memory_limit: usize,
    projection: Arc<str>,
    worker_id: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    log: Arc<dyn log::LogBackend>,
    engine: Engine,
    /// Where `search` requests go; `None` when not granted.
    search: Option<Arc<dyn search::SearchBackend>>,
    /// The test kit's `sql` backend, when it stands in for Postgres (and `sql` is granted).
    sql_stand_in: Option<Arc<dyn sql::SqlBackend>>,
    pre: PluginPre<PluginState>,
    /// sha256 of the component's bytes, hex.
    pub digest: String,
    /// `describe()`'s answer.
    pub info: PluginInfo,
    /// `name@version+sha256:<16 hex>`, recorded as `projection_version` on every event it settles.
    pub version_label: String,
    /// Whether the compiled code came from the cache.
    pub compiled: cache::Source,
    /// How long loading took (compile or cache load, validation, `describe()`).
    pub load_time: Duration,
}

impl LoadedPlugin {
    /// Makes one instance and drops it: what a claim loop pays after a trap, a timeout or a
    /// version change (`projector bench` times it).
    pub fn instantiate_probe(&self) -> wasmtime::Result<()> {
        self.instantiate(None).map(drop)
    }

    /// A fresh instance in a fresh store; `sql_slot` is where its handler lends transactions.
    fn instantiate(&self, sql_slot: Option<&sql::ConnSlot>) -> wasmtime::Result<Instance> {
        let state =
            PluginState {
                // Nothing inherited: no env, args, preopens, sockets or stdio.
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                limits: limits::MemoryCap::new(self.memory_limit),
                scope: BatchScope {
                    projection: self.projection.clone(),
                    worker_id: self.worker_id.clone(),
                    claim_batch_id: None,
                    deadline: None,
                },
                config: config::ConfigCtx::new(self.config.clone()),
                log: log::LogCtx::new(self.log.clone()),
                search: search::SearchCtx::new(self.search.clone()),
                sql: sql::SqlCtx::new(match &self.sql_stand_in {
                    Some(b) => Some(b.clone()),
                    None => self.sql.as_ref().zip(sql_slot).map(
                        |(g, slot)| -> Arc<dyn sql::SqlBackend> {
                            Arc::new(sql::SqlSession {
                                conn: slot.clone(),
                                runtime: g.runtime.clone(),
                                statement_timeout: g.statement_timeout,
                                limits: g.limits,
                            })
                        },
                    ),
                }),
            };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // What one call may copy out of the guest into host memory (a handle() result, a bulk
        // request, a log line): the canonical ABI lifts every string and list element, so a
        // guest returning a list whose entries all point at the same large string would make
        // the host allocate that string once per entry. Bounded by the plugin's memory cap,
        // which is as much as an honest guest can hold; past it the call traps.
        store.set_hostcall_fuel(self.memory_limit);
        store.epoch_deadline_trap();
        // Instantiation runs the guest's initialisers: bound them like any call.
        store.set_epoch_deadline(limits::deadline_ticks(limits::INSTANTIATE_DEADLINE));
        let bindings = self.pre.instantiate(&mut store)?;
        Ok(Instance { store, bindings })
    }
}

struct Instance {
    store: Store<PluginState>,
    bindings: Plugin,
}

enum CallError {
    /// The call trapped (panic, unreachable, out of memory, ...).
    Trap(String),
    /// The call ran past its deadline and was interrupted.
    Timeout,
    /// The call trapped after its memory cap refused a growth.
    OutOfMemory(String),
}

impl Instance {
    fn call(&mut self, events: &[WitEvent], deadline: Duration) -> Result<Vec<Outcome>, CallError> {
        self.store
            .set_epoch_deadline(limits::deadline_ticks(deadline));
        self.bindings
            .projector_plugin_projection()
            .call_handle(&mut self.store, events)
            .map_err(|e| match e.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => CallError::Timeout,
                _ if self.store.data().limits.denied => {
                    let refusal = self.store.data().limits.refusal().unwrap_or_default();
                    CallError::OutOfMemory(format!("{refusal}; then: {}", root_cause(&e)))
                }
                _ => CallError::Trap(root_cause(&e)),
            })
    }
}

/// The innermost cause of a wasmtime error, without the wasm backtrace wasmtime adds as context
/// (it names only function indices, and would bloat `outbox_events.error`).
fn root_cause(e: &wasmtime::Error) -> String {
    limits::truncate(e.root_cause().to_string(), 1000)
}

fn to_wit(e: &ClaimedEvent, projection: &str) -> WitEvent {
    WitEvent {
        id: e.id.to_string(),
        seq: e.seq,
        projection: projection.to_owned(),
        event_type: e.event_type.clone(),
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        payload: e.payload.clone(),
        occurred_at: e.occurred_at.clone(),
        attempt: e.attempt.max(1) as u32,
        headers: e.headers.clone(),
    }
}

/// A plugin's outcome as the host records it: the reason sanitized, the message cut to
/// [`limits::FAILURE_MESSAGE_MAX_BYTES`] (everything downstream, settle, logs and spans, sees
/// only the bounded one).
fn to_verdict(o: Outcome) -> Verdict {
    let message = |m: String| limits::truncate(m, limits::FAILURE_MESSAGE_MAX_BYTES);
    match o {
        Outcome::Success => Verdict::Success,
        Outcome::Transient(f) => Verdict::Transient {
            reason: sanitize_reason(&f.reason),
            message: message(f.message),
        },
        Outcome::Deterministic(f) => Verdict::Deterministic {
            reason: sanitize_reason(&f.reason),
            message: message(f.message),
        },
    }
}

/// Counts of what went wrong inside one [`Handler::handle`], for metrics and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallReport {
    /// Calls made (more than one when a batch was bisected).
    pub calls: u32,
    /// Calls that trapped.
    pub traps: u32,
    /// Calls that returned the wrong number of outcomes.
    pub contract_violations: u32,
    /// Whether the deadline interrupted a call.
    pub timed_out: bool,
}

/// Calls one plugin version for one worker loop, keeping an instance across batches and making a
/// fresh one after a failure.
pub struct Handler {
    plugin: Arc<LoadedPlugin>,
    instance: Option<Instance>,
    /// For `sql` plugins: where this handler lends its batch's transaction to its instance. Owned
    /// here, not by the instance, so a trapped (discarded) instance never takes it along, and not
    /// by the plugin version, so concurrent loops never see each other's transactions.
    sql_slot: Option<sql::ConnSlot>,
    /// Set after a statement stalled in a whole-batch pass (the offending event is unknown):
    /// the next batch runs one event per call from the start, so only that event is charged.
    isolate_next: bool,
}

impl Handler {
    /// A handler for `plugin`; the instance is made on first use.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        let sql_slot = plugin.sql.is_some().then(sql::ConnSlot::default);
        Handler {
            plugin,
            instance: None,
            sql_slot,
            isolate_next: false,
        }
    }

    /// The plugin version this handler runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Runs `claim` through the plugin within `budget` and returns one verdict per event, in
    /// order. Blocking: call it from a blocking thread.
    pub fn handle(&mut self, claim: &Claim, budget: Duration) -> (Vec<Verdict>, CallReport) {
        let events: Vec<WitEvent> = claim
            .events
            .iter()
            .map(|e| to_wit(e, &claim.projection))
            .collect();
        let mut verdicts = vec![None; events.len()];
        let mut report = CallReport::default();
        let deadline = Instant::now() + budget;
        self.run(
            claim.batch_id,
            &events,
            0,
            &mut verdicts,
            deadline,
            &mut report,
        );
        let verdicts = verdicts
            .into_iter()
            .map(|v| v.expect("every event gets a verdict"))
            .collect();
        (verdicts, report)
    }

    /// Whether this plugin's projection is granted `sql` (and so runs batches through
    /// [`Handler::handle_in_transaction`]).
    pub fn uses_sql(&self) -> bool {
        self.plugin.sql.is_some()
    }

    /// Runs `claim` inside `tx` (a transaction on the projection role's connection) so that only
    /// the writes of events whose outcome is `success` remain. Returns the transaction still open
    /// so the caller records the outcomes on it and commits both together; `Err` means the
    /// transaction is unusable (nothing of it may be committed). `supervisor` is a pool on the
    /// host's own role, used only to end the transaction's backend when a statement stalls.
    /// Blocking: call it from a blocking thread.
    ///
    /// The whole batch is tried first in one call under one savepoint: when every outcome is
    /// `success`, no statement failed and the host refused nothing, that is all (two round trips
    /// per batch besides the plugin's own statements, instead of two per event). Otherwise the
    /// savepoint is rolled back and the batch re-run one event per call, each under its own
    /// savepoint that is rolled back unless the event's outcome is `success`: a redelivery within
    /// the batch, which the contract allows. What the first pass counted (traps, wrong counts) is
    /// then superseded by the second. An event during which the host refused a statement fails
    /// with the refusal's reason, whatever the plugin answered.
    ///
    /// Every statement the host runs here is bounded too: the server's `statement_timeout` is
    /// set for the transaction first, and a host-side timeout ends the backend if the server
    /// does not answer.
    pub fn handle_in_transaction(
        &mut self,
        claim: &Claim,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        budget: Duration,
        supervisor: &sqlx::PgPool,
    ) -> (
        Vec<Verdict>,
        CallReport,
        sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>>,
    ) {
        let grant = self
            .plugin
            .sql
            .clone()
            .expect("handle_in_transaction needs a sql grant");
        let lease = self
            .sql_slot
            .clone()
            .expect("a sql plugin's handler has a slot");
        lease.clear_stall();
        lease.take_refusal();
        let rt = grant.runtime.clone();
        let events: Vec<WitEvent> = claim
            .events
            .iter()
            .map(|e| to_wit(e, &claim.projection))
            .collect();
        let mut out: Vec<Option<Verdict>> = vec![None; events.len()];
        let mut report = CallReport::default();
        let deadline = Instant::now() + budget;
        let finish = |out: Vec<Option<Verdict>>, failure: &str| -> Vec<Verdict> {
            out.into_iter()
                .map(|v| {
                    v.unwrap_or_else(|| Verdict::transient("sql_connection", failure.to_owned()))
                })
                .collect()
        };
        let timeout_ms = grant.statement_timeout.as_millis().max(1);
        let start = rt.block_on(tokio::time::timeout(
            sql::HOST_STATEMENT_TIMEOUT,
            sqlx::raw_sql(&format!(
                "SET LOCAL statement_timeout = {timeout_ms}; SAVEPOINT projector_batch; SELECT pg_backend_pid()"
            ))
            .fetch_all(&mut *tx),
        ));
        let backend = match start {
            Ok(Ok(rows)) => rows
                .last()
                .and_then(|r| sqlx::Row::try_get::<i32, _>(r, 0).ok())
                .unwrap_or(0),
            Ok(Err(e)) => {
                let msg = e.to_string();
                return (finish(out, &msg), report, Err(e));
            }
            Err(_) => {
                let e = sqlx::Error::Protocol("opening the batch's savepoint timed out".into());
                return (finish(out, &e.to_string()), report, Err(e));
            }
        };
        // A host statement on the lent connection: bounded, and fatal to the transaction (its
        // backend ended) when the server does not answer.
        let exec = |tx: &mut sqlx::Transaction<'static, sqlx::Postgres>, stmt: &str| match rt
            .block_on(tokio::time::timeout(
                sql::HOST_STATEMENT_TIMEOUT,
                sqlx::raw_sql(stmt).execute(&mut **tx),
            )) {
            Ok(r) => r.map(|_| ()),
            Err(_) => {
                sql::end_backend(&rt, supervisor, backend);
                Err(sqlx::Error::Protocol(format!(
                    "`{stmt}` did not answer within {:?}; the transaction's backend was ended",
                    sql::HOST_STATEMENT_TIMEOUT
                )))
            }
        };
        // After a plugin call: a stalled statement ends the transaction (nothing is committed).
        let stalled = |lease: &sql::SqlLease| -> Option<sqlx::Error> {
            lease.stalled().then(|| {
                sql::end_backend(&rt, supervisor, backend);
                sqlx::Error::Protocol(
                    "a plugin statement did not end by the batch deadline; the transaction's backend was ended"
                        .into(),
                )
            })
        };
        if events.len() > 1 && !std::mem::take(&mut self.isolate_next) {
            lease.lend(tx);
            let mut whole = CallReport::default();
            self.run(claim.batch_id, &events, 0, &mut out, deadline, &mut whole);
            tx = lease.take_back();
            if let Some(e) = stalled(&lease) {
                self.isolate_next = true;
                let msg = e.to_string();
                return (finish(vec![None; events.len()], &msg), whole, Err(e));
            }
            let refused = lease.take_refusal().is_some();
            let clean = whole.traps == 0 && whole.contract_violations == 0 && !whole.timed_out;
            let all_success = out.iter().all(|v| matches!(v, Some(Verdict::Success)));
            if clean
                && !refused
                && all_success
                && exec(&mut tx, "RELEASE SAVEPOINT projector_batch").is_ok()
            {
                return (finish(out, "unreachable"), whole, Ok(tx));
            }
            if let Err(e) = exec(&mut tx, "ROLLBACK TO SAVEPOINT projector_batch") {
                let msg = e.to_string();
                return (finish(vec![None; events.len()], &msg), whole, Err(e));
            }
            report.calls = whole.calls;
            out = vec![None; events.len()];
        }
        // A run stops at its first non-success: the later events of that aggregate are not run
        // (their writes would have to be undone anyway) and go back to `pending` untried.
        let mut stopped: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for i in 0..events.len() {
            let aggregate = claim.events[i].aggregate_id.as_str();
            if stopped.contains(aggregate) {
                out[i] = Some(Verdict::Deferred);
                continue;
            }
            if report.timed_out {
                out[i] = Some(Verdict::transient(
                    "plugin_timeout",
                    "batch deadline passed before this event was handled",
                ));
                stopped.insert(aggregate);
                continue;
            }
            if let Err(e) = exec(&mut tx, "SAVEPOINT projector_event") {
                let msg = e.to_string();
                return (finish(out, &msg), report, Err(e));
            }
            lease.lend(tx);
            self.run(
                claim.batch_id,
                &events[i..=i],
                i,
                &mut out,
                deadline,
                &mut report,
            );
            tx = lease.take_back();
            if let Some(e) = stalled(&lease) {
                let msg = e.to_string();
                out[i] = Some(Verdict::Deterministic {
                    reason: "sql_timeout".into(),
                    message: msg.clone(),
                });
                return (finish(out, &msg), report, Err(e));
            }
            if let Some(refusal) = lease.take_refusal() {
                out[i] = Some(Verdict::Deterministic {
                    reason: refusal.reason.into(),
                    message: refusal.message,
                });
            }
            let keep = matches!(out[i], Some(Verdict::Success));
            if keep && exec(&mut tx, "RELEASE SAVEPOINT projector_event").is_ok() {
                continue;
            }
            if keep {
                // A statement of this event failed (the transaction is aborted) yet the plugin
                // answered success: nothing of the event may stay.
                out[i] = Some(Verdict::transient(
                    "sql_aborted",
                    "the plugin answered success but a statement of this event failed; its writes were rolled back",
                ));
            }
            stopped.insert(aggregate);
            if let Err(e) = exec(&mut tx, "ROLLBACK TO SAVEPOINT projector_event") {
                let msg = e.to_string();
                return (finish(out, &msg), report, Err(e));
            }
        }
        (finish(out, "unreachable"), report, Ok(tx))
    }

    /// Calls the plugin on `events` (which start at `offset` in the batch), bisecting on traps
    /// and contract violations.
    fn run(
        &mut self,
        batch_id: Uuid,
        events: &[WitEvent],
        offset: usize,
        out: &mut [Option<Verdict>],
        deadline: Instant,
        report: &mut CallReport,
    ) {
        let fill = |out: &mut [Option<Verdict>], v: Verdict| {
            for slot in &mut out[offset..offset + events.len()] {
                *slot = Some(v.clone());
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            report.timed_out = true;
            return fill(
                out,
                Verdict::transient(
                    "plugin_timeout",
                    "batch deadline passed before this event was handled",
                ),
            );
        }
        let instance = match self.instance.as_mut() {
            Some(i) => i,
            None => match self.plugin.instantiate(self.sql_slot.as_ref()) {
                Ok(i) => self.instance.insert(i),
                Err(e) => {
                    return fill(
                        out,
                        Verdict::transient(
                            "plugin_instantiate",
                            format!("cannot instantiate plugin: {e:#}"),
                        ),
                    );
                }
            },
        };
        instance.store.data_mut().scope.claim_batch_id = Some(batch_id);
        instance.store.data_mut().scope.deadline = Some(deadline);
        report.calls += 1;
        let failure = match instance.call(events, remaining) {
            Ok(outcomes) if outcomes.len() == events.len() => {
                for (slot, o) in out[offset..offset + events.len()].iter_mut().zip(outcomes) {
                    *slot = Some(to_verdict(o));
                }
                return;
            }
            Ok(outcomes) => {
                report.contract_violations += 1;
                Verdict::transient(
                    "plugin_contract",
                    format!(
                        "handle() returned {} outcomes for {} events",
                        outcomes.len(),
                        events.len()
                    ),
                )
            }
            Err(CallError::Timeout) => {
                report.timed_out = true;
                self.instance = None;
                let secs = remaining.as_secs_f64();
                return fill(
                    out,
                    Verdict::transient(
                        "plugin_timeout",
                        format!("handle() interrupted after {secs:.3}s"),
                    ),
                );
            }
            Err(CallError::Trap(msg)) => {
                report.traps += 1;
                Verdict::transient("plugin_trap", msg)
            }
            Err(CallError::OutOfMemory(msg)) => {
                report.traps += 1;
                Verdict::transient(
                    "plugin_oom",
                    format!(
                        "memory cap of {} MiB reached: {msg}",
                        self.plugin.memory_limit >> 20
                    ),
                )
            }
        };
        // The instance may be poisoned (a trap) or confused (a wrong count): start afresh.
        self.instance = None;
        if events.len() == 1 {
            return fill(out, failure);
        }
        let mid = events.len() / 2;
        self.run(batch_id, &events[..mid], offset, out, deadline, report);
        self.run(
            batch_id,
            &events[mid..],
            offset + mid,
            out,
            deadline,
            report,
        );
    }
}
