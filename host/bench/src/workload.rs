//! The benchmark's events and the loops and queries that move and measure them.
//!
//! Seeded events look like the seeds' own (about 300 bytes of JSON). [`Spread::Uniform`] puts
//! them on `N / 10` aggregates so each aggregate has about ten events, interleaved the way
//! independent writers interleave them (`aggregate = i * 7919 mod aggregates`): per-aggregate
//! ordering is on, as by default, and a batch of consecutive events never holds two of one
//! aggregate. [`Spread::Skewed`] puts most of them on a few hot aggregates, interleaved too.

use projector_core::spec::{Grants, Ordering, ProjectionSpec, Tuning};
use projector_core::{Error, Result};
use projector_store::outbox::{claim, settle, Verdict};
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// What the seeded payloads look like.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `book.updated` with a title and some content: what `search-index` indexes (and `noop`
    /// ignores).
    Book,
    /// A chronicle event (actor, entity, before/after): what `chronicle-entries` upserts.
    Chronicle,
}

/// `SELECT version()`, for the report.
pub async fn server_version(pool: &PgPool) -> Result<String> {
    Ok(
        sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(pool)
            .await?,
    )
}

/// Empties the outbox (with the per-aggregate heads table the host may keep beside it, which
/// refers to it) and the read model. No host runs at that point.
pub async fn reset(pool: &PgPool) -> Result<()> {
    let heads: bool = sqlx::query_scalar("SELECT to_regclass('outbox_heads') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let outbox = if heads {
        "TRUNCATE outbox_events, outbox_heads"
    } else {
        "TRUNCATE outbox_events"
    };
    sqlx::raw_sql(&format!("{outbox}; TRUNCATE chronicle_entries"))
        .execute(pool)
        .await?;
    Ok(())
}

/// How seeded events fall on aggregates.
#[derive(Debug, Clone, Copy)]
pub enum Spread {
    /// `N / 10` aggregates, about ten events each.
    Uniform,
    /// `percent` % of the events on `hot` aggregates (`hot-0` ..), each of the others on an
    /// aggregate of its own (`cold-i`). Exactly `percent` % of every 100 consecutive events are
    /// hot (`i * 7919 mod 100 < percent`), interleaved over the hot aggregates (`i mod hot`).
    Skewed { hot: i64, percent: i64 },
}

impl Spread {
    /// The SQL expression of event `i`'s aggregate id.
    fn aggregate_sql(self, n: i64) -> String {
        match self {
            Spread::Uniform => format!("'book-' || ((i * 7919) % {})", (n / 10).max(1)),
            Spread::Skewed { hot, percent } => format!(
                "CASE WHEN (i * 7919) % 100 < {percent} THEN 'hot-' || (i % {hot})
                      ELSE 'cold-' || i END"
            ),
        }
    }
}

/// Inserts `n` pending events of `projection` in one statement, spread uniformly, then refreshes
/// the planner's statistics the way autovacuum eventually would.
pub async fn seed(pool: &PgPool, kind: Kind, projection: &str, n: i64) -> Result<()> {
    seed_spread(pool, kind, projection, n, Spread::Uniform).await
}

/// [`seed`], with the events falling on aggregates as `spread` says.
pub async fn seed_spread(
    pool: &PgPool,
    kind: Kind,
    projection: &str,
    n: i64,
    spread: Spread,
) -> Result<()> {
    let aggregate = spread.aggregate_sql(n);
    let (event_type, payload) = match kind {
        Kind::Book => (
            "'book.updated'",
            "jsonb_build_object(
                'title', 'The benchmark book number ' || i,
                'author', 'Author ' || (i % 997),
                'content', 'Chapter ' || (i % 40) || ': ' || repeat('lorem ipsum dolor sit amet ', 5),
                'tenantId', 'tenant-' || (i % 7),
                'requestId', md5(i::text),
                'source', 'bench',
                'tags', jsonb_build_array('fiction', 'tag-' || (i % 13)))",
        ),
        Kind::Chronicle => (
            "'chronicle.recorded'",
            "jsonb_build_object(
                'chronicleEventId', gen_random_uuid(),
                'actorUserId', 'user-' || (i % 50),
                'entityType', 'book',
                'entityId', a,
                'eventType', 'BookRenamed',
                'before', jsonb_build_object('title', 'An older title of book ' || i),
                'after', jsonb_build_object('title', 'The newer title of book ' || i),
                'occurredAt', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                'requestId', md5(i::text),
                'reason', 'renamed during the benchmark')",
        ),
    };
    let statement = format!(
        "INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
         SELECT $1, {event_type}, 'book', a, {payload}
         FROM (SELECT i, {aggregate} AS a FROM generate_series(1, $2::bigint) AS i) AS s"
    );
    sqlx::query(&statement)
        .bind(projection)
        .bind(n)
        .execute(pool)
        .await?;
    // The heads too: right after a TRUNCATE and a bulk load they have no statistics, and the
    // ordered claim's plan would be made for an empty table (autovacuum catches up only later).
    sqlx::raw_sql("VACUUM ANALYZE outbox_events")
        .execute(pool)
        .await?;
    sqlx::raw_sql("ANALYZE outbox_heads").execute(pool).await?;
    Ok(())
}

/// Inserts `n` `done` rows of `projection` as fast as Postgres takes them: one statement, minimal
/// columns, ids in index order, and (when allowed: superuser) without the NOTIFY trigger's
/// transition table. Returns how long it took.
pub async fn seed_done(pool: &PgPool, projection: &str, n: i64) -> Result<Duration> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let quiet = sqlx::raw_sql("SAVEPOINT s; SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await;
    if quiet.is_err() {
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT s")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO outbox_events (id, projection, event_type, aggregate_id, payload, status,
                                    attempts, done_at)
         SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, $1, 'book.updated',
                'old-' || (i % 100000), '{}', 'done', 1, now()
         FROM generate_series(1, $2::bigint) AS i",
    )
    .bind(projection)
    .bind(n)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::raw_sql("VACUUM ANALYZE outbox_events")
        .execute(pool)
        .await?;
    Ok(started.elapsed())
}

/// How one drain went, read from the rows.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub events: i64,
    /// First claim to last `done`, seconds.
    pub seconds: f64,
}

impl Drain {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Waits until none of `projection`'s `n` events is unfinished, then reads the drain off the rows.
/// Any event ending other than `done` makes the run an error.
pub async fn wait_drained(
    pool: &PgPool,
    projection: &str,
    n: i64,
    timeout: Duration,
    alive: impl FnMut() -> Result<()>,
) -> Result<Drain> {
    wait_settled(pool, projection, n, timeout, alive).await?;
    all_done(drained(pool, projection).await?, projection, n)
}

/// `drain`, if all `n` events of `projection` ended `done`; an error naming how many did if not.
pub fn all_done(drain: Drain, projection: &str, n: i64) -> Result<Drain> {
    if drain.events != n {
        return Err(Error::Other(anyhow::anyhow!(
            "`{projection}`: {} of {n} events done",
            drain.events
        )));
    }
    Ok(drain)
}

/// Waits until none of `projection`'s events is pending or processing. A failed event is an
/// error (no benchmark plugin fails), and so is still waiting after `timeout` or `alive` failing.
pub async fn wait_settled(
    pool: &PgPool,
    projection: &str,
    n: i64,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // Both probes use partial indexes: cheap enough not to disturb what they watch.
        let (unfinished, failed): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM outbox_events
                            WHERE projection = $1 AND status IN ('pending', 'processing')),
                    EXISTS (SELECT 1 FROM outbox_events WHERE projection = $1 AND status = 'failed')",
        )
        .bind(projection)
        .fetch_one(pool)
        .await?;
        if failed {
            let (reason, error): (Option<String>, Option<String>) = sqlx::query_as(
                "SELECT error_reason, error FROM outbox_events
                 WHERE projection = $1 AND status = 'failed' LIMIT 1",
            )
            .bind(projection)
            .fetch_one(pool)
            .await?;
            return Err(Error::Other(anyhow::anyhow!(
                "benchmark events of `{projection}` failed ({}: {})",
                reason.unwrap_or_default(),
                error.unwrap_or_default()
            )));
        }
        if !unfinished {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(Error::Other(anyhow::anyhow!(
                "`{projection}` did not drain {n} events within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `projection`'s done events and the time from its first claim to its last `done`.
pub async fn drained(pool: &PgPool, projection: &str) -> Result<Drain> {
    let (done, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'done'),
                EXTRACT(EPOCH FROM max(done_at) - min(processing_started_at))::float8
         FROM outbox_events
         WHERE projection = $1 AND processing_started_at IS NOT NULL -- not the seeded history",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    Ok(Drain {
        events: done,
        seconds: seconds.unwrap_or(0.0),
    })
}

/// Batch size and claim loops of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch_size: i64,
    pub concurrency: usize,
}

/// The spec the raw loop claims with: what the host would use at these settings.
fn raw_spec(projection: &str, shape: Shape) -> ProjectionSpec {
    ProjectionSpec {
        name: projection.to_owned(),
        plugin: Default::default(),
        ordering: Ordering::Aggregate,
        tuning: Tuning {
            concurrency: shape.concurrency,
            batch_size: shape.batch_size,
            ..projector_service::settings::default_tuning()
        },
        config: Default::default(),
        sources: Default::default(),
        grants: Grants::default(),
        memory_limit: 64 << 20,
    }
}

/// The raw SQL ceiling: `shape.concurrency` loops of the host's own claim and settle (every event
/// a success), nothing else, until `projection`'s `n` events are done.
pub async fn raw_drain(
    pool: &PgPool,
    projection: &str,
    n: i64,
    shape: Shape,
    timeout: Duration,
) -> Result<Drain> {
    let spec = std::sync::Arc::new(raw_spec(projection, shape));
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..shape.concurrency {
        let (pool, spec) = (pool.clone(), spec.clone());
        loops.spawn(async move {
            let worker = format!("bench-raw-{i}");
            loop {
                let claim = claim::claim(&pool, &spec, &worker).await?;
                if claim.events.is_empty() {
                    // Empty: done, or every remaining event waits behind the other loop's batch.
                    let left: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM outbox_events
                                        WHERE projection = $1 AND status IN ('pending', 'processing'))",
                    )
                    .bind(&spec.name)
                    .fetch_one(&pool)
                    .await?;
                    if !left {
                        return Ok::<(), sqlx::Error>(());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let verdicts = vec![Verdict::Success; claim.events.len()];
                settle::settle(&pool, &claim, &verdicts, &spec.tuning, "bench-raw").await?;
            }
        });
    }
    while let Some(joined) = loops.join_next().await {
        joined.map_err(|e| anyhow::anyhow!("raw loop panicked: {e}"))??;
    }
    wait_drained(pool, projection, n, timeout, || Ok(())).await
}

/// The rates of the first and the last tenth of a drained projection's `n` events, in `done_at`
/// order. Each tenth is timed from the end of the tenth before it (the first from the drain's
/// first claim) to its own last `done_at`, so the tenths' windows tile the drain.
pub async fn tenths(pool: &PgPool, projection: &str, n: i64) -> Result<(f64, f64)> {
    let k = (n / 10).max(1);
    let (first, last): (Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH d AS (
             SELECT done_at, row_number() OVER (ORDER BY done_at, seq) AS r
             FROM outbox_events WHERE projection = $1 AND status = 'done'
         )
         SELECT EXTRACT(EPOCH FROM (SELECT done_at FROM d WHERE r = $2)
                                   - (SELECT min(processing_started_at) FROM outbox_events
                                      WHERE projection = $1))::float8,
                EXTRACT(EPOCH FROM (SELECT done_at FROM d WHERE r = $3)
                                   - (SELECT done_at FROM d WHERE r = $3 - $2))::float8",
    )
    .bind(projection)
    .bind(k)
    .bind(n)
    .fetch_one(pool)
    .await?;
    let rate = |seconds: Option<f64>| k as f64 / seconds.unwrap_or(0.0).max(1e-9);
    Ok((rate(first), rate(last)))
}

/// The most events of one aggregate a single claim of `projection` delivered (read from the
/// fencing token each done row keeps), or `None` if the rows do not keep it.
pub async fn longest_aggregate_run(pool: &PgPool, projection: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT max(c) FROM (SELECT count(*) AS c FROM outbox_events
                             WHERE projection = $1 AND claim_batch_id IS NOT NULL
                             GROUP BY claim_batch_id, aggregate_id) AS per_batch",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?)
}

/// The share of `projection`'s events that fall on its `top` busiest aggregates.
pub async fn busiest_share(pool: &PgPool, projection: &str, top: i64) -> Result<f64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(c), 0)::float8 / greatest((SELECT count(*) FROM outbox_events
                                                         WHERE projection = $1), 1)
         FROM (SELECT count(*) AS c FROM outbox_events WHERE projection = $1
               GROUP BY aggregate_id ORDER BY c DESC LIMIT $2) AS busiest",
    )
    .bind(projection)
    .bind(top)
    .fetch_one(pool)
    .await?)
}

/// Checks that the chronicle run wrote one entry per event.
pub async fn check_chronicle(pool: &PgPool, n: i64) -> Result<()> {
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM chronicle_entries")
        .fetch_one(pool)
        .await?;
    if entries != n {
        return Err(Error::Other(anyhow::anyhow!(
            "chronicle-entries wrote {entries} entries for {n} events"
        )));
    }
    Ok(())
}

/// One document the search ceiling sends: what `search-index` would send for the event.
pub struct Document {
    pub id: String,
    pub version: i64,
    pub source: String,
}

/// The documents `search-index` makes of `projection`'s pending events, in `seq` order.
pub async fn search_documents(pool: &PgPool, projection: &str) -> Result<Vec<Document>> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, aggregate_id,
                (payload || jsonb_build_object('entityType', 'book', 'entityId', aggregate_id,
                                               'eventType', event_type, 'eventSeq', seq))::text
         FROM outbox_events WHERE projection = $1 ORDER BY seq",
    )
    .bind(projection)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, id, source)| Document {
            id,
            version: seq,
            source,
        })
        .collect())
}

/// Concurrent writers of the pickup-latency run.
const WRITERS: u32 = 4;

/// The pickup-latency run commits its events in groups, once per tick.
const TICK: Duration = Duration::from_millis(10);

/// How the pickup-latency run went.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Offers `rate` events per second for `seconds`, waits until they are done and reads
/// insert→done from the rows (`created_at` is the inserting transaction's start, `done_at` the
/// settling statement's clock).
///
/// Events are committed every [`TICK`] as one insert of the tick's share (10 events per
/// statement at 1,000 events/s), from [`WRITERS`] connections. Not one commit per event: with
/// fsync on, the outbox's NOTIFY trigger serialises committing transactions (Postgres holds its
/// notification queue lock through the commit's WAL flush), which capped single-row commits at
/// about 370 per second here whatever the number of writers, and the queueing for that lock
/// would be counted as pickup latency.
pub async fn offer_and_measure(
    pool: &PgPool,
    projection: &str,
    rate: u32,
    seconds: u32,
    alive: impl FnMut() -> Result<()>,
) -> Result<Latency> {
    use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
    let total = i64::from(rate) * i64::from(seconds);
    let ticks_per_second = (Duration::from_secs(1).as_nanos() / TICK.as_nanos()) as i64;
    let ticks = i64::from(seconds) * ticks_per_second;
    // Events of tick t: [first(t), first(t + 1)), spreading `rate` evenly over a second's ticks.
    let first = move |t: i64| t * i64::from(rate) / ticks_per_second;
    let next = std::sync::Arc::new(AtomicI64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let writers_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(WRITERS)
        .min_connections(WRITERS)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (pool, next, projection) = (writers_pool.clone(), next.clone(), projection.to_owned());
        writers.spawn(async move {
            loop {
                let t = next.fetch_add(1, AtomicOrdering::Relaxed);
                if t >= ticks {
                    return Ok::<(), sqlx::Error>(());
                }
                let (lo, hi) = (first(t), first(t + 1));
                if lo == hi {
                    continue;
                }
                tokio::time::sleep_until(start + TICK * t as u32).await;
                sqlx::query(
                    "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
                     SELECT $1, 'book.updated', 'book-' || k,
                            jsonb_build_object('title', 'The benchmark book number ' || k,
                                               'content', repeat('lorem ipsum dolor sit amet ', 8))
                     FROM generate_series($2::bigint, $3::bigint - 1) AS k",
                )
                .bind(&projection)
                .bind(lo)
                .bind(hi)
                .execute(&pool)
                .await?;
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.map_err(|e| anyhow::anyhow!("writer panicked: {e}"))??;
    }
    writers_pool.close().await;
    wait_drained(pool, projection, total, Duration::from_secs(120), alive).await?;
    let (p50, p99, max, span): (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l),
                max(l),
                EXTRACT(EPOCH FROM max(created_at) - min(created_at))::float8
         FROM (SELECT EXTRACT(EPOCH FROM done_at - created_at)::float8 * 1000 AS l, created_at
               FROM outbox_events WHERE projection = $1) t",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    Ok(Latency {
        achieved_rate: if span > 0.0 {
            (total - 1) as f64 / span
        } else {
            0.0
        },
        p50_ms: p50,
        p99_ms: p99,
        max_ms: max,
    })
}
