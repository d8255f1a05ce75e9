//! Throughput at scale: the runs that show where a drain stops growing with its batch, with the
//! skew of its stream, with its length and with its hosts.
//!
//! - **skewed stream**: most events on a few hot aggregates, ordering on, against a uniform drain
//!   of the same count; once with `OUTBOX_EVENTS_PER_AGGREGATE` = the batch size, once with the
//!   host's default;
//! - **batch-size sweep**: a noop drain per batch size, each next to its two raw ceilings;
//! - **long drain**: the rate of the first and of the last tenth of a long drain;
//! - **many hosts**: one host, then several on the same database, on the same events, with every
//!   transition into `done` logged by a trigger so that lost and duplicated events are counted
//!   from the rows, not inferred from the rates.
//!
//! Every run starts from a truncated outbox seeded in one statement, as the other drains do.

use crate::child::{HostConfig, Projection};
use crate::cpu::{self, CpuUse, PerThousand};
use crate::plan::Plan;
use crate::queue;
use crate::report::{Report, Row};
use crate::workload::{self, Drain, Kind, Shape, Spread};
use projector_core::Result;
use sqlx::PgPool;
use std::time::Duration;
use tracing::info;

/// How long a drain of `n` events may take before the run is an error.
pub fn drain_timeout(n: i64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(n as u64 * 5)
}

/// A skewed drain may be far slower than a uniform one (that is what it measures).
fn skew_timeout(n: i64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(n as u64 * 50)
}

/// The host's own claim and settle loop on `n` fresh events of `projection`.
pub async fn own_statements_ceiling(
    pool: &PgPool,
    projection: &str,
    n: i64,
    shape: Shape,
) -> Result<(Drain, CpuUse)> {
    workload::reset(pool).await?;
    workload::seed(pool, Kind::Book, projection, n).await?;
    cpu::metered(
        pool,
        workload::raw_drain(pool, projection, n, shape, drain_timeout(n)),
    )
    .await
}

/// The independent claim + ack loop on `n` fresh jobs of its own table.
pub async fn queue_ceiling(pool: &PgPool, n: i64, shape: Shape) -> Result<(Drain, CpuUse)> {
    queue::seed(pool, n).await?;
    cpu::metered(pool, queue::drain(pool, n, shape, drain_timeout(n))).await
}

/// A child host with `noop` draining `n` fresh events of `projection` spread as `spread`.
async fn noop_drain(
    host: &HostConfig,
    plan: &Plan,
    pool: &PgPool,
    projection: &str,
    n: i64,
    spread: Spread,
    timeout: Duration,
) -> Result<(Drain, crate::child::Memory, CpuUse)> {
    workload::reset(pool).await?;
    workload::seed_spread(pool, Kind::Book, projection, n, spread).await?;
    let projections = [Projection::noop(projection, &plan.plugins)];
    host.drain(&projections, pool, projection, n, timeout).await
}

/// The host setting the skewed run passes through the environment.
const EVENTS_PER_AGGREGATE: &str = "OUTBOX_EVENTS_PER_AGGREGATE";

/// The skewed stream against a uniform drain of the same count.
pub async fn skewed(
    plan: &Plan,
    pool: &PgPool,
    host: &HostConfig,
    report: &mut Report,
) -> Result<()> {
    let n = plan.skew_events;
    let (hot, percent) = (plan.skew_hot, plan.skew_hot_percent);
    info!(
        events = n,
        "projector, noop, uniform (the skewed runs' reference)"
    );
    let (uniform, _, _) = noop_drain(
        host,
        plan,
        pool,
        "bench_uniform",
        n,
        Spread::Uniform,
        drain_timeout(n),
    )
    .await?;
    report.push(Row::rate(
        "skew_uniform_drain",
        &format!(
            "projector drain, noop, {n} events on {} aggregates",
            (n / 10).max(1)
        ),
        uniform.rate(),
    ));
    let supported = host.run_has_flag("events-per-aggregate")?;
    let runs = [
        ("skew_drain", Some(plan.batch_size)),
        ("skew_drain_default", None),
    ];
    for (key, per_aggregate) in runs {
        info!(
            events = n,
            hot,
            percent,
            ?per_aggregate,
            "projector, noop, skewed stream"
        );
        let host = match per_aggregate {
            Some(k) => host.with_env(EVENTS_PER_AGGREGATE, &k.to_string()),
            None => host.clone(),
        };
        let projection = "bench_skew";
        workload::reset(pool).await?;
        let spread = Spread::Skewed { hot, percent };
        workload::seed_spread(pool, Kind::Book, projection, n, spread).await?;
        let share = workload::busiest_share(pool, projection, hot).await?;
        let projections = [Projection::noop(projection, &plan.plugins)];
        let (skew, _, _) = host
            .drain(&projections, pool, projection, n, skew_timeout(n))
            .await?;
        let longest = workload::longest_aggregate_run(pool, projection).await?;
        let setting = match per_aggregate {
            Some(k) if supported => format!("{EVENTS_PER_AGGREGATE}={k}"),
            Some(k) => format!(
                "{EVENTS_PER_AGGREGATE}={k} passed, but this host has no --events-per-aggregate: \
                 ignored"
            ),
            None => format!("{EVENTS_PER_AGGREGATE} not set (the host's default)"),
        };
        let label = match per_aggregate {
            Some(k) => format!(
                "projector drain, noop, skewed ({percent} % on {hot} aggregates), \
                 events_per_aggregate {k}"
            ),
            None => format!(
                "projector drain, noop, skewed ({percent} % on {hot} aggregates), \
                 events_per_aggregate default"
            ),
        };
        let row = Row::rate(key, &label, skew.rate());
        let row = match per_aggregate {
            Some(_) => row.ratio_of("skew_uniform_drain", uniform.rate(), 0.50),
            None => row.compared_to("skew_uniform_drain", uniform.rate()),
        };
        report.push(row.note(&format!(
            "{n} events, {:.1} % of them on the {hot} busiest aggregates; {setting}; longest run \
             of one aggregate in a batch: {}",
            share * 100.0,
            longest.map_or("(unknown)".to_owned(), |l| l.to_string()),
        )));
    }
    Ok(())
}

/// A noop drain per batch size, each next to its raw ceilings (unless `--sweep-ceilings false`).
pub async fn sweep(
    plan: &Plan,
    pool: &PgPool,
    host: &HostConfig,
    report: &mut Report,
) -> Result<()> {
    let n = plan.sweep_events;
    for &batch_size in &plan.sweep_batch_sizes {
        let shape = Shape {
            batch_size,
            concurrency: plan.concurrency,
        };
        let (sql_key, queue_key) = (
            format!("sweep_b{batch_size}_raw_sql"),
            format!("sweep_b{batch_size}_raw_queue"),
        );
        let mut ceilings = None;
        if plan.sweep_ceilings {
            info!(events = n, batch_size, "sweep: raw SQL ceiling");
            let (sql, sql_cpu) = own_statements_ceiling(pool, "bench_raw", n, shape).await?;
            report.push(
                Row::rate(
                    sql_key.clone(),
                    &format!("sweep, batch {batch_size}: raw SQL ceiling (host's statements)"),
                    sql.rate(),
                )
                .note(&sql_cpu.per_thousand(n).describe()),
            );
            info!(events = n, batch_size, "sweep: raw queue ceiling");
            let (queue, queue_cpu) = queue_ceiling(pool, n, shape).await?;
            report.push(
                Row::rate(
                    queue_key.clone(),
                    &format!("sweep, batch {batch_size}: raw queue ceiling (own table)"),
                    queue.rate(),
                )
                .note(&queue_cpu.per_thousand(n).describe()),
            );
            ceilings = Some((sql.rate(), queue.rate()));
        }
        info!(events = n, batch_size, "sweep: projector, noop");
        let (noop, _, noop_cpu) = noop_drain(
            &host.with_batch_size(batch_size),
            plan,
            pool,
            "bench_sweep",
            n,
            Spread::Uniform,
            drain_timeout(n),
        )
        .await?;
        let mut row = Row::rate(
            format!("sweep_b{batch_size}_noop"),
            &format!("sweep, batch {batch_size}: projector drain, noop"),
            noop.rate(),
        )
        .note(&noop_cpu.per_thousand(n).describe());
        if let Some((sql, queue)) = ceilings {
            row = row.compared_to(queue_key, queue).compared_to(sql_key, sql);
        }
        report.push(row);
    }
    Ok(())
}

/// One long noop drain, read in tenths.
pub async fn long_drain(
    plan: &Plan,
    pool: &PgPool,
    host: &HostConfig,
    report: &mut Report,
) -> Result<()> {
    let n = plan.long_events;
    info!(events = n, "projector, noop, long drain");
    let projection = "bench_long";
    let (drain, memory, _) = noop_drain(
        host,
        plan,
        pool,
        projection,
        n,
        Spread::Uniform,
        drain_timeout(n),
    )
    .await?;
    let (first, last) = workload::tenths(pool, projection, n).await?;
    report.push(
        Row::rate(
            "long_drain",
            &format!(
                "long drain, noop, {n} events on {} aggregates: whole",
                (n / 10).max(1)
            ),
            drain.rate(),
        )
        .note(&format!(
            "drained in {:.1} s; host peak RSS {:.1} MiB",
            drain.seconds, memory.peak_mib
        )),
    );
    report.push(Row::rate(
        "long_first_tenth",
        "long drain: first tenth of the events (by done_at)",
        first,
    ));
    report.push(
        Row::rate(
            "long_last_tenth",
            "long drain: last tenth of the events (by done_at)",
            last,
        )
        .ratio_of("long_first_tenth", first, 0.80),
    );
    Ok(())
}

/// Records every transition of an outbox row into `done` (statement-level, from the transition
/// tables: one insert per settling statement). A second transition of one `seq` is an event
/// applied twice; a seeded event with none is an event lost.
const DONE_LOG: &str = "
CREATE TABLE bench_done_log (
    seq        bigint      NOT NULL,
    claimed_by text,
    logged_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION bench_log_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_done_log (seq, claimed_by)
    SELECT n.seq, n.claimed_by
    FROM bench_new n JOIN bench_old o ON o.seq = n.seq
    WHERE n.status = 'done' AND o.status <> 'done';
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_done AFTER UPDATE ON outbox_events
    REFERENCING OLD TABLE AS bench_old NEW TABLE AS bench_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_log_done();
";

const DROP_DONE_LOG: &str = "
DROP TRIGGER bench_log_done ON outbox_events;
DROP FUNCTION bench_log_done();
DROP TABLE bench_done_log;
";

/// Shows the done log counts a second application before trusting its zero: an event taken to
/// `done`, back to `pending` and to `done` again (in a transaction rolled back) must be logged
/// twice.
async fn check_done_log(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    let logged: i64 = sqlx::query_scalar(
        "WITH e AS (INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
                    VALUES ('bench_done_log_check', 'check', 'check', '{}') RETURNING seq)
         SELECT seq FROM e",
    )
    .fetch_one(&mut *tx)
    .await?;
    for status in ["done", "pending", "done"] {
        sqlx::query("UPDATE outbox_events SET status = $2 WHERE seq = $1")
            .bind(logged)
            .bind(status)
            .execute(&mut *tx)
            .await?;
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_done_log WHERE seq = $1")
        .bind(logged)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    if count != 2 {
        return Err(projector_core::Error::Other(anyhow::anyhow!(
            "the multi-host run's done log recorded {count} of 2 transitions into done"
        )));
    }
    Ok(())
}

/// What the done log says about one multi-host run.
struct Tally {
    /// Seeded events with no transition into `done`, or not `done` now.
    lost: i64,
    /// Transitions into `done` beyond the first of their event.
    duplicated: i64,
    /// Events delivered more than once (`attempts > 1`): a lease lost or a batch handed back.
    redelivered: i64,
    /// Events settled `done` per worker id.
    per_host: Vec<(String, i64)>,
}

async fn tally(pool: &PgPool, projection: &str, n: i64) -> Result<Tally> {
    // Statistics first: without them the planner takes the fresh log for a few rows and joins
    // it to the outbox with a nested loop (100,000 × 100,000 comparisons at the defaults).
    sqlx::raw_sql("ANALYZE bench_done_log")
        .execute(pool)
        .await?;
    let (done_once, redelivered): (i64, i64) = sqlx::query_as(
        "WITH logged AS (SELECT DISTINCT seq FROM bench_done_log)
         SELECT count(*) FILTER (WHERE o.status = 'done' AND l.seq IS NOT NULL),
                count(*) FILTER (WHERE o.attempts > 1)
         FROM outbox_events o LEFT JOIN logged l ON l.seq = o.seq
         WHERE o.projection = $1",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    let duplicated: i64 =
        sqlx::query_scalar("SELECT count(*) - count(DISTINCT seq) FROM bench_done_log")
            .fetch_one(pool)
            .await?;
    let per_host: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(claimed_by, '?'), count(*) FROM bench_done_log GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(Tally {
        lost: n - done_once,
        duplicated,
        redelivered,
        per_host,
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One host, then `plan.hosts` hosts, draining the same events on one database, in
/// `plan.multi_host_pairs` alternating pairs; lost and duplicated events are counted over all.
pub async fn many_hosts(
    plan: &Plan,
    pool: &PgPool,
    host: &HostConfig,
    report: &mut Report,
) -> Result<()> {
    let n = plan.multi_host_events;
    let projection = "bench_hosts";
    sqlx::raw_sql(DONE_LOG).execute(pool).await?;
    if let Err(e) = check_done_log(pool).await {
        let _ = sqlx::raw_sql(DROP_DONE_LOG).execute(pool).await;
        return Err(e);
    }
    let mut runs = Vec::new();
    for _pair in 0..plan.multi_host_pairs {
        for hosts in [1, plan.hosts] {
            info!(events = n, hosts, "projector, noop, hosts on one database");
            workload::reset(pool).await?;
            sqlx::raw_sql("TRUNCATE bench_done_log")
                .execute(pool)
                .await?;
            workload::seed(pool, Kind::Book, projection, n).await?;
            let projections = [Projection::noop(projection, &plan.plugins)];
            let result = host
                .drain_hosts(&projections, pool, projection, n, hosts, drain_timeout(n))
                .await;
            let result = match result {
                Ok((drain, _, cpu)) => tally(pool, projection, n)
                    .await
                    .map(|t| (drain, t, cpu.per_thousand(n))),
                Err(e) => Err(e),
            };
            match result {
                Ok(run) => runs.push((hosts, run)),
                Err(e) => {
                    let _ = sqlx::raw_sql(DROP_DONE_LOG).execute(pool).await;
                    return Err(e);
                }
            }
        }
    }
    sqlx::raw_sql(DROP_DONE_LOG).execute(pool).await?;

    let loops = plan.concurrency;
    let hosts = plan.hosts;
    let (ones, manys): (Vec<_>, Vec<_>) = runs.iter().partition(|(h, _)| *h == 1);
    let one_rates: Vec<f64> = ones.iter().map(|(_, (d, _, _))| d.rate()).collect();
    let many_rates: Vec<f64> = manys.iter().map(|(_, (d, _, _))| d.rate()).collect();
    let pair_ratios: Vec<f64> = one_rates
        .iter()
        .zip(&many_rates)
        .map(|(one, many)| many / one)
        .collect();
    let pairs = pair_ratios
        .iter()
        .zip(one_rates.iter().zip(&many_rates))
        .map(|(r, (one, many))| format!("{one:.0} / {many:.0} ({:.0} %)", r * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let sum = |f: fn(&Tally) -> i64, side: &[&(usize, (Drain, Tally, PerThousand))]| -> i64 {
        side.iter().map(|(_, (_, t, _))| f(t)).sum()
    };
    let (one_lost, many_lost) = (sum(|t| t.lost, &ones), sum(|t| t.lost, &manys));
    let (one_dup, many_dup) = (sum(|t| t.duplicated, &ones), sum(|t| t.duplicated, &manys));
    let (one_redelivered, many_redelivered) = (
        sum(|t| t.redelivered, &ones),
        sum(|t| t.redelivered, &manys),
    );
    let shares = |t: &Tally| {
        t.per_host
            .iter()
            .map(|(host, count)| format!("{host} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let last_many = &manys.last().expect("at least one pair").1 .1;
    let one = median(&one_rates);
    report.push(Row::rate(
        "one_host_drain",
        &format!(
            "1 host × {loops} loops, noop, {n} events (median of {})",
            one_rates.len()
        ),
        one,
    ));
    // Held to the target: the ratio of the two sides' medians. The median of the pairs' ratios
    // (each pair ran back to back) is in the note.
    let ratio = median(&pair_ratios);
    report.push(
        Row::rate(
            "many_hosts_drain",
            &format!(
                "{hosts} hosts × {loops} loops, noop, the same {n} events (median of {})",
                many_rates.len()
            ),
            median(&many_rates),
        )
        .ratio_of("one_host_drain", one, 1.0)
        .note(&format!(
            "done per host: {}; delivered more than once: {many_redelivered} (1 host: \
             {one_redelivered}); pairs (1 host / {hosts} hosts, events/s): {pairs}; median of the \
             pairs' ratios {:.0} %; the per-host tally is the last drain's",
            shares(last_many),
            ratio * 100.0,
        )),
    );
    // What each side spent per event: a neighbour's load moves the rates above by a factor of
    // two on this machine kind, not the CPU a drain needs (the database's and the hosts' own).
    let cpu = |side: &[&(usize, (Drain, Tally, PerThousand))]| -> Option<Vec<f64>> {
        side.iter().map(|(_, (_, _, c))| c.measured_ms()).collect()
    };
    if let (Some(one_cpu), Some(many_cpu)) = (cpu(&ones), cpu(&manys)) {
        let listed = |side: &[&(usize, (Drain, Tally, PerThousand))]| {
            side.iter()
                .map(|(_, (_, _, c))| {
                    format!(
                        "{:.0} + {:.0}",
                        c.database_ms.unwrap_or_default(),
                        c.hosts_ms
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let steal = |side: &[&(usize, (Drain, Tally, PerThousand))]| {
            median(
                &side
                    .iter()
                    .map(|(_, (_, _, c))| c.steal_ms)
                    .collect::<Vec<_>>(),
            )
        };
        let one_median = median(&one_cpu);
        report.push(
            Row::value(
                "one_host_cpu",
                "1 host: CPU per 1,000 events, database + host (median)",
                one_median,
                "ms",
            )
            .note(&format!(
                "database + host ms per 1,000 events, each drain: {}; stolen (median) {:.0} ms",
                listed(&ones),
                steal(&ones)
            )),
        );
        report.push(
            Row::value(
                "many_hosts_cpu",
                &format!("{hosts} hosts: CPU per 1,000 events, database + hosts (median)"),
                median(&many_cpu),
                "ms",
            )
            .compared_to("one_host_cpu", one_median)
            .note(&format!(
                "database + hosts ms per 1,000 events, each drain: {}; stolen (median) {:.0} ms",
                listed(&manys),
                steal(&manys)
            )),
        );
    }
    report.push(
        Row::count(
            "hosts_lost",
            &format!("events lost, 1 and {hosts} hosts"),
            one_lost + many_lost,
        )
        .at_most(0.0)
        .note(&format!(
            "1 host: {}, {hosts} hosts: {} (seeded events not done, or done without a logged \
             transition)",
            one_lost, many_lost
        )),
    );
    report.push(
        Row::count(
            "hosts_duplicated",
            &format!("events done twice, 1 and {hosts} hosts"),
            one_dup + many_dup,
        )
        .at_most(0.0)
        .note(&format!(
            "1 host: {}, {hosts} hosts: {} (second transitions into done)",
            one_dup, many_dup
        )),
    );
    Ok(())
}
