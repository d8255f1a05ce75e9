//! The benchmark's events and the loops and queries that move and measure them.
//!
//! Seeded events look like the seeds' own (about 300 bytes of JSON), spread over `N / 10`
//! aggregates so each aggregate has about ten events, interleaved the way independent writers
//! interleave them (`aggregate = seq * 7919 mod aggregates`): per-aggregate ordering is on, as by
//! default, and a batch of consecutive events never holds two of one aggregate.

use super::Plan;
use crate::outbox::{claim, settle, Verdict};
use crate::settings::{Grants, Ordering, ProjectionSpec, Tuning};
use crate::{Error, Result};
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

/// Empties the outbox and the read model (no host runs at that point).
pub async fn reset(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql("TRUNCATE outbox_events; TRUNCATE chronicle_entries")
        .execute(pool)
        .await?;
    Ok(())
}

/// Inserts `n` pending events of `projection` in one statement, then refreshes the planner's
/// statistics the way autovacuum eventually would.
pub async fn seed(pool: &PgPool, kind: Kind, projection: &str, n: i64) -> Result<()> {
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
                'entityId', 'book-' || ((i * 7919) % $3),
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
         SELECT $1, {event_type}, 'book', 'book-' || ((i * 7919) % $3), {payload}
         FROM generate_series(1, $2::bigint) AS i"
    );
    let aggregates = (n / 10).max(1);
    sqlx::query(&statement)
        .bind(projection)
        .bind(n)
        .bind(aggregates)
        .execute(pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE outbox_events")
        .execute(pool)
        .await?;
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
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Drain> {
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
            break;
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(Error::Other(anyhow::anyhow!(
                "`{projection}` did not drain {n} events within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (done, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'done'),
                EXTRACT(EPOCH FROM max(done_at) - min(processing_started_at))::float8
         FROM outbox_events
         WHERE projection = $1 AND processing_started_at IS NOT NULL -- not the seeded history",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    if done != n {
        return Err(Error::Other(anyhow::anyhow!(
            "`{projection}`: {done} of {n} events done"
        )));
    }
    Ok(Drain {
        events: n,
        seconds: seconds.unwrap_or(0.0),
    })
}

/// The spec the raw loop claims with: what the host would use at these settings.
fn raw_spec(projection: &str, plan: &Plan) -> ProjectionSpec {
    ProjectionSpec {
        name: projection.to_owned(),
        plugin: Default::default(),
        ordering: Ordering::Aggregate,
        tuning: Tuning {
            concurrency: plan.concurrency,
            batch_size: plan.batch_size,
            ..Tuning::default()
        },
        config: Default::default(),
        sources: Default::default(),
        grants: Grants::default(),
        memory_limit: 64 << 20,
    }
}

/// The raw SQL ceiling: `concurrency` loops of the host's own claim and settle (every event a
/// success), nothing else.
pub async fn raw_drain(
    pool: &PgPool,
    projection: &str,
    plan: &Plan,
    timeout: Duration,
) -> Result<Drain> {
    let spec = std::sync::Arc::new(raw_spec(projection, plan));
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..plan.concurrency {
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
    wait_drained(pool, projection, plan.events, timeout, || Ok(())).await
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
