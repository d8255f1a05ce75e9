//! `projector bench`: projector measured against its ceilings, side by side in one run.
//!
//! Absolute numbers drift between runs on a shared machine, so every throughput is reported next
//! to the ceiling it is bound by, measured minutes apart in the same run:
//!
//! - two **raw ceilings** at the same batch size and concurrency, no plugin, no metrics: the
//!   host's own claim and settle statements (`outbox/claim.sql`, `outbox/settle.sql`, through the
//!   same Rust functions) driven by a minimal loop, and an independent claim + ack loop on a job
//!   table of its own (`queue.rs`), which a slow outbox statement does not lower;
//! - **projector** (a child `projector run`, so its RSS is its own) draining the same number of
//!   events with `noop`, then `chronicle-entries` (`sql` capability), then `search-index` into the
//!   search server, next to that server's own `_bulk` ceiling driven directly;
//! - **pickup latency**, insert to `done`, at a fixed offered rate (LISTEN/NOTIFY wake-ups);
//! - the plugin runtime in-process: cached load, instantiate, call cost per event;
//! - at scale (`scale.rs`): a skewed stream against a uniform one, a batch-size sweep, the first
//!   and last tenth of a long drain, several hosts against one;
//! - the raw claim loop again with millions of `done` rows in the table.
//!
//! Invariants: everything happens in a database of its own (`projector_bench_<random>`, created
//! from `DATABASE_URL`'s server and dropped at the end, with the roles the `sql` projection
//! created), so the database `DATABASE_URL` names is never touched. Drain rates are computed from
//! the rows themselves (first `processing_started_at` to last `done_at`), so the host's start-up
//! and the harness's polling are not part of them. A run where any event does not end `done` is
//! an error, not a number (the multi-host run counts lost and duplicated events instead, and
//! holds them to zero). An interrupted run (SIGINT, SIGTERM) cleans up too: the signal handlers
//! are installed before the database is created, the measurement in progress is dropped (which
//! kills its child hosts), the database and roles are dropped, and the command exits 130
//! (SIGINT) or 143 (SIGTERM).
#![deny(missing_docs)]

mod child;
mod cpu;
mod plan;
mod probes;
mod queue;
mod report;
mod scale;
mod workload;

pub use plan::BenchArgs;
use plan::{validate, Plan};

use projector_core::{Error, Result};
use projector_test_support::with_database;
use report::{Report, Row};
use sqlx::{Connection, PgConnection, PgPool};
use std::path::Path;
use tracing::info;
use workload::{Kind, Shape};

/// `projector bench`.
pub fn command(args: BenchArgs) -> Result<()> {
    projector_service::run::init_logging(projector_service::settings::LogFormat::Text);
    let plan = validate(args)?;
    projector_service::run::tokio_runtime().block_on(run(plan))
}

/// The bench's own database, dropped (with the roles its hosts made: the `sql` projection's
/// login role and every projection's rebuild source role) on `drop_all`.
struct BenchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(admin_url: &str) -> Result<BenchDb> {
        let name = format!(
            "projector_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(admin_url)
            .await
            .map_err(|e| Error::Connect(format!("cannot connect: {e}")))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| {
                Error::config(
                    "DATABASE_URL",
                    format!("cannot create the benchmark's database (needs CREATEDB): {e}"),
                )
            })?;
        admin.close().await.ok();
        let url = with_database(admin_url, &name);
        Ok(BenchDb {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// Drops the database and the roles recorded in it. `pool` is the run's pool on it, when the
    /// run got that far (an interrupted one may not have: a pool of its own is opened then).
    async fn drop_all(self, pool: Option<PgPool>) {
        let pool = match pool {
            Some(pool) => Some(pool),
            None => projector_store::db::connect(&self.url, 1).await.ok(),
        };
        let mut roles: Vec<String> = Vec::new();
        if let Some(pool) = pool {
            roles = sqlx::query_scalar("SELECT role::text FROM projector_sql_roles")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
            // The hosts also made each projection's rebuild source role (not recorded there);
            // every projection a host ran has a plugin version.
            let projections: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT projection FROM plugin_versions")
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            roles.extend(
                projections
                    .iter()
                    .map(|p| projector_store::sql_roles::source_role_name(&self.name, p)),
            );
            for role in &roles {
                let _ = sqlx::raw_sql(&format!("DROP OWNED BY \"{role}\""))
                    .execute(&pool)
                    .await;
            }
            pool.close().await;
        }
        let Ok(mut admin) = PgConnection::connect(&self.admin_url).await else {
            return;
        };
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = sqlx::raw_sql(&drop).execute(&mut admin).await {
            tracing::warn!(database = %self.name, error = %e, "could not drop the benchmark's database");
        }
        for role in &roles {
            let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\""))
                .execute(&mut admin)
                .await;
        }
    }
}

/// SIGINT and SIGTERM, caught from installation on (instead of killing the process), so that an
/// interrupted run still drops what it created.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn install() -> Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        let install =
            |kind| signal(kind).map_err(|e| anyhow::anyhow!("installing a signal handler: {e}"));
        Ok(Interrupts {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    /// Waits for the first of them (one that came before this call counts too).
    async fn next(&mut self) -> Error {
        // The numbers are the same on every Unix projector runs on.
        let (name, number) = tokio::select! {
            _ = self.int.recv() => ("SIGINT", 2),
            _ = self.term.recv() => ("SIGTERM", 15),
        };
        Error::Interrupted { name, number }
    }
}

async fn run(plan: Plan) -> Result<()> {
    let mut interrupts = Interrupts::install()?;
    let work = std::env::temp_dir().join(format!("projector-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", work.display()))?;
    let db = BenchDb::create(&plan.admin_url).await?;
    info!(database = %db.name, "benchmark database created");
    let result = tokio::select! {
        result = async {
            let pool = projector_store::db::connect(&db.url, plan.concurrency as u32 + 6).await?;
            let result = measure(&plan, &db, &pool, &work).await;
            Ok::<_, Error>((pool, result))
        } => result,
        interrupted = interrupts.next() => {
            tracing::warn!(database = %db.name, "{interrupted}: dropping the benchmark's database");
            Err(interrupted)
        }
    };
    let (pool, result) = match result {
        Ok((pool, result)) => (Some(pool), result),
        Err(e) => (None, Err(e)),
    };
    db.drop_all(pool).await;
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    print!("{}", report.table());
    let json = serde_json::to_string_pretty(&report.json()).expect("serialisable");
    std::fs::write(&plan.json, json + "\n").map_err(|e| {
        Error::config(
            "--json",
            format!("cannot write {}: {e}", plan.json.display()),
        )
    })?;
    println!("JSON report: {}", plan.json.display());
    Ok(())
}

/// Every measurement, in an order that keeps the table small while it matters: the drains run on
/// a truncated table, the large-table run last. The scale runs (skew, sweep, long drain, many
/// hosts) come after the runtime probes, in `scale.rs`.
async fn measure(plan: &Plan, db: &BenchDb, pool: &PgPool, work: &Path) -> Result<Report> {
    projector_store::db::migrate(pool).await?;
    sqlx::raw_sql(include_str!(
        "../../../examples/migrations/0001_chronicle.sql"
    ))
    .execute(pool)
    .await?;
    queue::create(pool).await?;
    let mut report = Report::new(plan, workload::server_version(pool).await?);
    let host = child::HostConfig {
        exe: std::env::current_exe().map_err(|e| anyhow::anyhow!("locating projector: {e}"))?,
        database_url: db.url.clone(),
        elastic_url: plan.elastic_url.clone(),
        batch_size: plan.batch_size,
        concurrency: plan.concurrency,
        work: work.to_path_buf(),
        env: Vec::new(),
    };
    let n = plan.events;
    let drain_timeout = scale::drain_timeout(n);
    let shape = Shape {
        batch_size: plan.batch_size,
        concurrency: plan.concurrency,
    };

    info!(events = n, "raw SQL ceiling (empty table)");
    let (raw, raw_cpu) = scale::own_statements_ceiling(pool, "bench_raw", n, shape).await?;
    report.push(
        Row::rate(
            "raw_sql_ceiling",
            "raw SQL ceiling, host's statements (claim + settle loop)",
            raw.rate(),
        )
        .note(&raw_cpu.per_thousand(n).describe()),
    );

    info!(events = n, "raw queue ceiling (a table of its own)");
    let (queue, queue_cpu) = scale::queue_ceiling(pool, n, shape).await?;
    let queue_cpu = queue_cpu.per_thousand(n);
    report.push(
        Row::rate(
            "raw_queue_ceiling",
            "raw queue ceiling, own table (claim + ack loop)",
            queue.rate(),
        )
        .note(&queue_cpu.describe()),
    );

    info!(events = n, "projector, noop");
    workload::reset(pool).await?;
    workload::seed(pool, Kind::Book, "bench_noop", n).await?;
    let projections = [child::Projection::noop("bench_noop", &plan.plugins)];
    let (noop, noop_rss, noop_cpu) = host
        .drain(&projections, pool, "bench_noop", n, drain_timeout)
        .await?;
    let noop_cpu = noop_cpu.per_thousand(n);
    report.push(
        Row::rate("noop_drain", "projector drain, noop", noop.rate())
            .ratio_of("raw_queue_ceiling", queue.rate(), 0.80)
            .compared_to("raw_sql_ceiling", raw.rate())
            .note(&noop_cpu.describe()),
    );
    // The work per event behind the two rates, which a busy neighbour does not change: the
    // database's CPU per 1,000 events in the noop drain and in the queue's loop (each with its
    // client: the host, or the bench process the queue runs in).
    if let (Some(noop_db), Some(queue_db)) = (
        noop_cpu.measured_database_ms(),
        queue_cpu.measured_database_ms(),
    ) {
        report.push(Row::value(
            "queue_database_cpu",
            "raw queue ceiling: database CPU per 1,000 events",
            queue_db,
            "ms",
        ));
        report.push(
            Row::value(
                "noop_database_cpu",
                "projector drain, noop: database CPU per 1,000 events",
                noop_db,
                "ms",
            )
            .compared_to("queue_database_cpu", queue_db),
        );
    }

    info!(events = n, "projector, chronicle-entries");
    workload::reset(pool).await?;
    workload::seed(pool, Kind::Chronicle, "bench_chronicle", n).await?;
    let projections = [child::Projection::chronicle(
        "bench_chronicle",
        &plan.plugins,
    )];
    let (chronicle, _, _) = host
        .drain(&projections, pool, "bench_chronicle", n, drain_timeout)
        .await?;
    workload::check_chronicle(pool, n).await?;
    report.push(
        Row::rate(
            "chronicle_drain",
            "projector drain, chronicle-entries (sql)",
            chronicle.rate(),
        )
        .ratio_of("raw_sql_ceiling", raw.rate(), 0.50),
    );

    let ns = plan.search_events;
    info!(events = ns, "search server _bulk ceiling");
    workload::reset(pool).await?;
    workload::seed(pool, Kind::Book, "bench_search", ns).await?;
    // Fresh indices of this run's own (the server may keep older runs' documents and versions).
    let suffix = db.name.trim_start_matches("projector_bench_");
    let (ceiling_index, host_index) = (
        format!("bench-ceiling-{suffix}"),
        format!("bench-index-{suffix}"),
    );
    let docs = workload::search_documents(pool, "bench_search").await?;
    let bulk = probes::bulk_ceiling(&plan.elastic_url, &ceiling_index, docs, plan).await?;
    report.push(Row::rate(
        "search_bulk_ceiling",
        "search server _bulk ceiling (direct)",
        bulk,
    ));

    info!(
        events = ns,
        "projector, search-index (three projections loaded)"
    );
    let projections = [
        child::Projection::noop("bench_noop", &plan.plugins),
        child::Projection::chronicle("bench_chronicle", &plan.plugins),
        child::Projection::search("bench_search", &host_index, &plan.plugins),
    ];
    let (search, rss3, _) = host
        .drain(&projections, pool, "bench_search", ns, drain_timeout)
        .await?;
    probes::delete_index(&plan.elastic_url, &ceiling_index).await;
    probes::delete_index(&plan.elastic_url, &host_index).await;
    report.push(
        Row::rate(
            "search_drain",
            "projector drain, search-index",
            search.rate(),
        )
        .ratio_of("search_bulk_ceiling", bulk, 0.70),
    );

    info!(
        rate = plan.rate,
        seconds = plan.latency_seconds,
        "pickup latency"
    );
    workload::reset(pool).await?;
    let projections = [child::Projection::noop("bench_latency", &plan.plugins)];
    let latency = host
        .latency(&projections, pool, "bench_latency", plan)
        .await?;
    report.push(Row::value(
        "offered_rate",
        "pickup run: offered rate achieved",
        latency.achieved_rate,
        "ev/s",
    ));
    report.push(
        Row::value(
            "pickup_p50_ms",
            "pickup latency insert→done p50",
            latency.p50_ms,
            "ms",
        )
        .at_most(50.0),
    );
    report.push(
        Row::value(
            "pickup_p99_ms",
            "pickup latency insert→done p99",
            latency.p99_ms,
            "ms",
        )
        .at_most(50.0),
    );
    report.push(Row::value(
        "pickup_max_ms",
        "pickup latency insert→done max",
        latency.max_ms,
        "ms",
    ));

    report.push(
        Row::value(
            "rss_noop_mib",
            "host peak RSS, noop run",
            noop_rss.peak_mib,
            "MiB",
        )
        .at_most(100.0),
    );
    report.push(
        Row::value(
            "rss_three_mib",
            "host peak RSS, three projections (search run)",
            rss3.peak_mib,
            "MiB",
        )
        .at_most(100.0),
    );

    info!("plugin runtime probes (in-process)");
    let p = probes::plugin_probes(&plan.plugins, work, plan.batch_size as usize).await?;
    report.push(Row::value(
        "plugin_compile_ms",
        "plugin load, compiling (noop)",
        p.compile_ms,
        "ms",
    ));
    report.push(Row::value(
        "plugin_cached_load_ms",
        "plugin load, compiled-cache hit (noop)",
        p.cached_load_ms,
        "ms",
    ));
    report.push(
        Row::value(
            "instantiate_ms",
            "plugin instantiate (from the cached InstancePre)",
            p.instantiate_ms,
            "ms",
        )
        .at_most(1.0),
    );
    report.push(Row::value(
        "call_us_per_event",
        "plugin call per event (noop, one batch)",
        p.per_event_us,
        "µs",
    ));
    report.push(Row::value(
        "call_us_single",
        "plugin call, batch of one event (noop)",
        p.single_call_us,
        "µs",
    ));

    scale::skewed(plan, pool, &host, &mut report).await?;
    scale::sweep(plan, pool, &host, &mut report).await?;
    scale::long_drain(plan, pool, &host, &mut report).await?;
    scale::many_hosts(plan, pool, &host, &mut report).await?;

    // The control runs right before, on the same server after the same runs (their autovacuum,
    // checkpoints and table churn), so that the ratio shows what the done rows cost and nothing
    // else: against the ceiling taken at the start, it also carried everything in between.
    info!(events = n, "raw claim loop, no done rows (the control)");
    workload::reset(pool).await?;
    workload::seed(pool, Kind::Book, "bench_raw", n).await?;
    let control = workload::raw_drain(pool, "bench_raw", n, shape, drain_timeout).await?;
    report.push(
        Row::rate(
            "raw_without_done_rows",
            "raw claim loop, no done rows (its control, run just before)",
            control.rate(),
        )
        .compared_to("raw_sql_ceiling", raw.rate()),
    );
    info!(
        done_rows = plan.done_rows,
        events = n,
        "raw claim loop with done rows present"
    );
    workload::reset(pool).await?;
    let seeded = workload::seed_done(pool, "bench_raw", plan.done_rows).await?;
    workload::seed(pool, Kind::Book, "bench_raw", n).await?;
    let large = workload::raw_drain(pool, "bench_raw", n, shape, drain_timeout).await?;
    report.push(
        Row::rate(
            "raw_with_done_rows",
            &format!("raw claim loop, {} done rows present", plan.done_rows),
            large.rate(),
        )
        .ratio_of("raw_without_done_rows", control.rate(), 0.90)
        .note(&format!(
            "done rows seeded in {:.1} s",
            seeded.as_secs_f64()
        )),
    );
    Ok(report)
}
