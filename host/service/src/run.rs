//! `projector run`: validates everything, then wires the claim loops, wake-ups, sweeps, metrics
//! and HTTP together, and shuts down cleanly.
//!
//! Start-up order keeps the promise that a bad configuration touches nothing: settings, then
//! plugins (compiled and validated), then the HTTP ports, then the database connection. Only
//! when all of them are good are migrations applied and the first claim made.
//!
//! Shutdown (SIGTERM, SIGINT or `OUTBOX_RUN_SECONDS`): loops stop claiming, in-flight batches
//! get until the longest lease to settle, and whatever this worker still holds after that is
//! released back to `pending` (attempt given back) so another host takes it at once.

use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::plugin_versions::ActiveVersions;
use crate::settings::RunArgs;
use crate::settings::{table, LogFormat, ProjectionSpec, Settings};
use crate::worker::Worker;
use crate::{Error, Result};
use projector_runtime::{LoadedPlugin, Runtime};
use projector_store::outbox::lease;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Installs the global log subscriber on stderr (`RUST_LOG` filters, default `info`), without
/// trace export (for the one-shot commands; `projector run` sets up tracing too).
pub fn init_logging(format: LogFormat) {
    let _ = crate::telemetry::init(format, None);
}

/// The tokio runtime every command runs on.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// `projector run`.
pub fn run_command(args: RunArgs) -> Result<()> {
    let settings = Settings::resolve(args.overrides, args.config.as_deref(), &args.plugins)?;
    let export = crate::telemetry::TraceExport::from_env()?;
    let telemetry = crate::telemetry::init(settings.log_format, export.as_ref())?;
    let rt = tokio_runtime();
    let result = rt.block_on(run(settings, !args.no_migrate));
    // A plugin call still running past the grace period must not hold the process open.
    rt.shutdown_background();
    telemetry.shutdown();
    result
}

async fn bind(host: std::net::IpAddr, port: u16, key: &str) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(host, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(key, format!("cannot listen on {addr}: {e}")))
}

/// Runs the host until shutdown.
pub async fn run(settings: Settings, migrate: bool) -> Result<()> {
    let runtime =
        Runtime::new().map_err(|e| anyhow::anyhow!("starting the WebAssembly runtime: {e:#}"))?;
    let metrics = Arc::new(Metrics::new(&settings.metric_prefix));
    let runtime = runtime
        .with_search(settings.elastic.as_ref())?
        .with_cache(settings.plugin_cache_dir.as_deref())
        .with_log_dropped_counter(metrics.plugin_log_dropped.clone());
    let mut loaded: Vec<(ProjectionSpec, Arc<LoadedPlugin>, Vec<u8>)> = Vec::new();
    for spec in &settings.projections {
        let bytes = std::fs::read(&spec.plugin).map_err(|e| Error::Plugin {
            path: spec.plugin.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let plugin = runtime.load_bytes(spec, &settings.worker_id, &bytes, &spec.plugin)?;
        loaded.push((spec.clone(), plugin, bytes));
    }
    let http_listener = bind(settings.http_host, settings.http_port, table::http_port.env).await?;
    let metrics_listener = match settings.metrics_port {
        Some(port) => Some(bind(settings.http_host, port, table::metrics_port.env).await?),
        None => None,
    };
    let loops: usize = settings
        .projections
        .iter()
        .map(|p| p.tuning.concurrency)
        .sum();
    let pool = projector_store::db::connect(&settings.database_url, (loops + 4) as u32).await?;
    // The admin API's open reads get connections of their own, never the claim loops'.
    let read_pool = http::read_pool(&settings.database_url)?;
    if migrate {
        projector_store::db::migrate(&pool).await?;
    }
    let sql_pools: HashMap<String, PgPool> = projector_store::sql_roles::provision(
        &pool,
        &settings.database_url,
        &settings.projections,
        |p| p.tuning.concurrency as u32 + 1,
    )
    .await?
    .into_iter()
    .collect();

    let shutdown = CancellationToken::new();
    let names: Vec<String> = settings
        .projections
        .iter()
        .map(|p| p.name.clone())
        .collect();
    // Every series at zero before the gauge refresh starts, which then only ever overwrites them
    // with what it read (the console's history samples right after a refresh).
    for name in &names {
        metrics.init_projection(name);
    }
    let history = Arc::new(crate::history::History::new(&names));
    let state = Arc::new(AppState {
        history: history.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        read_pool,
        ready: Default::default(),
        versions: Default::default(),
        admin_token: settings.admin_token.clone(),
        settings: Some(Arc::new(settings.clone())),
    });
    let mut servers = Vec::new();
    servers.push(tokio::spawn(serve(
        http_listener,
        http::router(state.clone()),
        shutdown.clone(),
    )));
    if let Some(l) = metrics_listener {
        servers.push(tokio::spawn(serve(
            l,
            http::metrics_router(state.clone()),
            shutdown.clone(),
        )));
    }

    let wakes: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
        settings
            .projections
            .iter()
            .map(|p| (p.name.clone(), Arc::new(Notify::new())))
            .collect(),
    );
    let listener = tokio::spawn(listen(pool.clone(), wakes.clone(), shutdown.clone()));
    let mut background = vec![
        tokio::spawn(refresh_gauges(
            pool.clone(),
            metrics.clone(),
            history,
            names.clone(),
            settings.metrics_refresh,
            shutdown.clone(),
        )),
        tokio::spawn(sweep_stuck(
            pool.clone(),
            metrics.clone(),
            settings.clone(),
            wakes.clone(),
            shutdown.clone(),
        )),
    ];
    if let Some(retention) = settings.retention.clone() {
        background.push(tokio::spawn(retain(
            pool.clone(),
            metrics.clone(),
            retention,
            shutdown.clone(),
        )));
    }

    let worker_id: Arc<str> = settings.worker_id.as_str().into();
    let mut workers = tokio::task::JoinSet::new();
    let versions = Arc::new(
        ActiveVersions::start(
            Arc::new(runtime),
            pool.clone(),
            &settings.worker_id,
            settings.plugin_file_policy,
            settings.canary,
            loaded,
        )
        .await?,
    );
    let _ = state.versions.set(versions.clone());
    let mut watchers = vec![
        tokio::spawn(versions.clone().follow(shutdown.clone())),
        tokio::spawn(
            versions
                .clone()
                .watch_canaries(crate::canary::DECISION_TICK, shutdown.clone()),
        ),
    ];
    if let Some(every) = settings.plugin_watch {
        for spec in &settings.projections {
            watchers.push(tokio::spawn(
                versions.clone().watch_file(spec.name.clone(), every),
            ));
        }
    }
    for spec in &settings.projections {
        let slot = versions
            .slot(&spec.name)
            .expect("every projection has a slot");
        let plugin = slot.current();
        let spec = Arc::new(spec.clone());
        let claim_turn = Arc::new(tokio::sync::Mutex::new(()));
        for _ in 0..spec.tuning.concurrency {
            let worker = Worker {
                spec: spec.clone(),
                plugin: slot.clone(),
                pool: pool.clone(),
                sql_pool: sql_pools.get(&spec.name).cloned(),
                worker_id: worker_id.clone(),
                metrics: metrics.clone(),
                wake: wakes[&spec.name].clone(),
                claim_turn: claim_turn.clone(),
                poll_interval: settings.poll_interval,
                shutdown: shutdown.clone(),
            };
            workers.spawn(worker.run());
        }
        metrics
            .dispatch_active
            .with_label_values(&[&spec.name])
            .set(1);
        info!(projection = %spec.name, plugin = %plugin.version_label, path = %spec.plugin.display(),
            concurrency = spec.tuning.concurrency, batch_size = spec.tuning.batch_size,
            compiled = plugin.compiled.as_str(), load_ms = plugin.load_time.as_secs_f64() * 1000.0, "projection started");
    }
    state.ready.store(true, Ordering::Relaxed);
    info!(worker_id = %settings.worker_id, http_port = settings.http_port, projections = ?names,
        observability_schema = crate::telemetry::OBSERVABILITY_SCHEMA, tracing = crate::telemetry::describe(),
        "projector started");

    wait_for_stop(settings.run_for).await;
    info!("shutting down: no new claims");
    shutdown.cancel();
    let grace = settings
        .projections
        .iter()
        .map(|p| p.tuning.lease)
        .max()
        .unwrap_or(Duration::from_secs(30));
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            grace_s = grace.as_secs_f64(),
            "in-flight batches did not finish within the lease; releasing them"
        );
        workers.abort_all();
    }
    match lease::release(&pool, &settings.worker_id, None).await {
        Ok(0) => {}
        Ok(n) => info!(released = n, "released claims back to pending"),
        Err(e) => {
            error!(error = %e, "could not release claims; they will be reclaimed after the lease")
        }
    }
    for name in &names {
        metrics.dispatch_active.with_label_values(&[name]).set(0);
    }
    listener.abort();
    for task in background.into_iter().chain(watchers) {
        task.abort();
    }
    for server in servers {
        let _ = server.await;
    }
    pool.close().await;
    info!("stopped");
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        error!(error = %e, "HTTP server failed");
    }
}

async fn wait_for_stop(run_for: Option<Duration>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let timer = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = timer => info!("OUTBOX_RUN_SECONDS elapsed"),
    }
}

/// Forwards NOTIFYs to the loops of the named projection. On reconnect everyone is woken, since
/// notifications sent while disconnected are lost (polling covers the gap either way).
async fn listen(
    pool: PgPool,
    wakes: Arc<HashMap<String, Arc<Notify>>>,
    shutdown: CancellationToken,
) {
    let wake_all = || wakes.values().for_each(|w| w.notify_waiters());
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "LISTEN connection failed; polling only until it is back");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(projector_store::notify::CHANNEL).await {
            warn!(error = %e, "LISTEN failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(w) = wakes.get(n.payload()) {
                        w.notify_waiters();
                    }
                }
                Ok(None) => {
                    // The connection dropped and will be re-established by the next call.
                    wake_all();
                }
                Err(e) => {
                    warn!(error = %e, "LISTEN connection lost");
                    break;
                }
            }
        }
    }
}

/// Every `OUTBOX_METRICS_REFRESH_SECONDS`: the SQL-backed gauges (read from the outbox by one
/// host per interval, see `outbox::status::gauges`), then (from them, without a query) a sample
/// of the console's history.
async fn refresh_gauges(
    pool: PgPool,
    metrics: Arc<Metrics>,
    history: Arc<crate::history::History>,
    names: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() {
        tick.tick().await;
        match metrics.refresh(&pool, &names, every).await {
            Ok(()) => history.record(&metrics),
            Err(e) => warn!(error = %e, "refreshing gauges failed"),
        }
    }
}

/// Every `OUTBOX_RECLAIM_INTERVAL_SECONDS`: fail stuck rows that have no attempt left (the claim
/// query takes over the others) and remove aggregate heads left empty (`outbox::heads`), unless
/// another host swept the projection within the interval; and wake the loops so expired leases
/// are picked up promptly.
async fn sweep_stuck(
    pool: PgPool,
    metrics: Arc<Metrics>,
    settings: Settings,
    wakes: Arc<HashMap<String, Arc<Notify>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.reclaim_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() {
        tick.tick().await;
        for spec in &settings.projections {
            // Another host may have swept this projection within the interval: once is enough.
            match lease::sweep_due(&pool, &spec.name, settings.reclaim_interval).await {
                Ok(true) => sweep_projection(&pool, &metrics, spec).await,
                Ok(false) => {}
                Err(e) => warn!(projection = %spec.name, error = %e, "stuck-work sweep failed"),
            }
            wakes[&spec.name].notify_waiters();
        }
    }
}

/// One projection's stuck-work sweep: fail stuck rows without attempts left, remove empty heads.
async fn sweep_projection(
    pool: &PgPool,
    metrics: &Metrics,
    spec: &crate::settings::ProjectionSpec,
) {
    match lease::sweep_exhausted(pool, spec).await {
        Ok(seqs) if !seqs.is_empty() => {
            metrics
                .terminal_failed
                .with_label_values(&[&spec.name, "lease_expired"])
                .inc_by(seqs.len() as u64);
            warn!(projection = %spec.name, count = seqs.len(), seqs = ?seqs,
                        "stuck events used up their attempts; marked failed (lease_expired)");
        }
        Ok(_) => {}
        Err(e) => warn!(projection = %spec.name, error = %e, "stuck-work sweep failed"),
    }
    match projector_store::outbox::heads::sweep_empty(
        pool,
        &spec.name,
        projector_store::outbox::heads::SWEEP_LIMIT,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => {
            debug!(projection = %spec.name, removed = n, "removed empty aggregate heads")
        }
        Err(e) => warn!(projection = %spec.name, error = %e, "aggregate-head sweep failed"),
    }
}

/// Every `OUTBOX_RETENTION_INTERVAL_SECONDS`: delete old `done` rows in small batches. Several
/// hosts may run it at once; each batch skips rows another one holds.
async fn retain(
    pool: PgPool,
    metrics: Arc<Metrics>,
    retention: crate::settings::Retention,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() {
        tick.tick().await;
        match projector_store::outbox::retention::prune(
            &pool,
            retention.done_after,
            retention.batch_size,
            None,
        )
        .await
        {
            Ok(deleted) => {
                for (projection, n) in &deleted {
                    metrics.pruned.with_label_values(&[projection]).inc_by(*n);
                }
                if !deleted.is_empty() {
                    info!(deleted = ?deleted, "retention deleted old done rows");
                }
            }
            Err(e) => warn!(error = %e, "retention pass failed"),
        }
    }
}
