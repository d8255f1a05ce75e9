//! The independent raw ceiling: a minimal job queue on a table of its own, drained by a claim +
//! ack loop at the same batch size and concurrency as everything else.
//!
//! It shares nothing with projector but Postgres: not the outbox table, not its indexes, not its
//! statements. So a slow claim or settle in the host lowers projector's rate without lowering
//! this ceiling (the own-statements ceiling in `workload::raw_drain` moves with them).
//!
//! What it does, and only that: claim the first `batch` pending jobs in `id` order with
//! `FOR UPDATE SKIP LOCKED`, mark them `processing` with a lease and return their payloads; then
//! ack the whole batch `done` by primary key in one statement (`id = ANY($1)`), fenced by the
//! claimer. No per-aggregate ordering, no retries, no metrics. Jobs whose lease expired are not
//! claimed again here: in a queue that is a separate sweep's work (River's rescuer), and no lease
//! expires during a drain.

use super::workload::{Drain, Shape};
use projector_core::{Error, Result};
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// The queue's table, created once in the benchmark's database.
const SCHEMA: &str = "
CREATE TABLE bench_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status           text        NOT NULL DEFAULT 'pending',
    locked_by        text,
    lease_expires_at timestamptz,
    claimed_at       timestamptz,
    done_at          timestamptz,
    payload          jsonb       NOT NULL
);
CREATE INDEX bench_jobs_pending ON bench_jobs (id) WHERE status = 'pending';
";

/// Claims up to $1 jobs for $2. `id = ANY(ARRAY(subquery))` rather than a join with a CTE: the
/// plan is an index scan of the partial index then one of the primary key, generic or custom.
const CLAIM: &str = "
UPDATE bench_jobs
SET status = 'processing', locked_by = $2, claimed_at = now(),
    lease_expires_at = now() + interval '30 seconds'
WHERE id = ANY(ARRAY(SELECT id FROM bench_jobs WHERE status = 'pending'
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING id, payload::text";

/// Acks jobs $1, still held by $2.
const ACK: &str = "
UPDATE bench_jobs
SET status = 'done', done_at = clock_timestamp(), lease_expires_at = NULL
WHERE id = ANY($1) AND status = 'processing' AND locked_by = $2";

/// Creates the queue's table (once, in the benchmark's fresh database).
pub async fn create(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    Ok(())
}

/// Empties the queue and fills it with `n` pending jobs whose payloads are the outbox seed's
/// (about 300 bytes of JSON), then refreshes the planner's statistics as the outbox seed does.
pub async fn seed(pool: &PgPool, n: i64) -> Result<()> {
    sqlx::raw_sql("TRUNCATE bench_jobs RESTART IDENTITY")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO bench_jobs (payload)
         SELECT jsonb_build_object(
                    'title', 'The benchmark book number ' || i,
                    'author', 'Author ' || (i % 997),
                    'content', 'Chapter ' || (i % 40) || ': ' || repeat('lorem ipsum dolor sit amet ', 5),
                    'tenantId', 'tenant-' || (i % 7),
                    'requestId', md5(i::text),
                    'source', 'bench',
                    'tags', jsonb_build_array('fiction', 'tag-' || (i % 13)))
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_jobs")
        .execute(pool)
        .await?;
    Ok(())
}

/// Drains the `n` seeded jobs with `shape.concurrency` claim + ack loops of `shape.batch_size`,
/// and reads the rate off the rows (first claim to last ack), as the outbox drains are read.
pub async fn drain(pool: &PgPool, n: i64, shape: Shape, timeout: Duration) -> Result<Drain> {
    let deadline = Instant::now() + timeout;
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..shape.concurrency {
        let pool = pool.clone();
        loops.spawn(async move {
            let worker = format!("bench-queue-{i}");
            loop {
                let jobs: Vec<(i64, String)> = sqlx::query_as(CLAIM)
                    .bind(shape.batch_size)
                    .bind(&worker)
                    .fetch_all(&pool)
                    .await?;
                // Empty: every job left is done or held by another loop (nothing is ordered).
                if jobs.is_empty() || Instant::now() >= deadline {
                    return Ok::<(), sqlx::Error>(());
                }
                let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
                sqlx::query(ACK)
                    .bind(&ids)
                    .bind(&worker)
                    .execute(&pool)
                    .await?;
            }
        });
    }
    while let Some(joined) = loops.join_next().await {
        joined.map_err(|e| anyhow::anyhow!("queue loop panicked: {e}"))??;
    }
    let (done, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'done'),
                EXTRACT(EPOCH FROM max(done_at) - min(claimed_at))::float8
         FROM bench_jobs",
    )
    .fetch_one(pool)
    .await?;
    if done != n {
        return Err(Error::Other(anyhow::anyhow!(
            "the raw queue loop finished {done} of {n} jobs within {timeout:?}"
        )));
    }
    Ok(Drain {
        events: n,
        seconds: seconds.unwrap_or(0.0),
    })
}
