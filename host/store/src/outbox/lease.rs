//! Leases: renewing a claim during a long batch, releasing claims at shutdown, and sweeping
//! stuck work.
//!
//! A claim's lease is renewed while its batch runs, but never past the batch's
//! `max_processing` bound: a worker that hangs stops renewing and its rows become claimable
//! again by anyone ([`super::claim`] takes over expired leases). Rows whose lease expired after
//! their last allowed attempt are not reclaimed forever: the sweep marks them `failed` with
//! reason `lease_expired` (an event that crashes every host that touches it ends there).

use projector_core::spec::ProjectionSpec;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const RENEW_SQL: &str = "\
UPDATE outbox_events
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE claim_batch_id = $1 AND status = 'processing'";

// Released rows go back to due-now `pending` and their attempt is given back: the plugin's
// answer never reached the database, so the attempt does not count.
const RELEASE_SQL: &str = "\
UPDATE outbox_events
SET status = 'pending', claim_batch_id = NULL, lease_expires_at = NULL, next_retry_at = now(),
    attempts = GREATEST(attempts - 1, 0)
WHERE claimed_by = $1 AND status = 'processing' AND ($2::uuid IS NULL OR claim_batch_id = $2)
RETURNING projection";

const SWEEP_SQL: &str = "\
UPDATE outbox_events
SET status = 'failed', failure_kind = 'attempts_exhausted', error_reason = 'lease_expired',
    error = format('lease expired during attempt %s of %s (claimed by %s)', attempts, $2::int, claimed_by),
    lease_expires_at = NULL
WHERE projection = $1 AND status = 'processing' AND lease_expires_at < now() AND attempts >= $2
RETURNING seq";

/// Extends the lease of every row `batch_id` still holds; returns how many it holds.
pub async fn renew(pool: &PgPool, batch_id: Uuid, lease: Duration) -> sqlx::Result<u64> {
    let done = sqlx::query(RENEW_SQL)
        .bind(batch_id)
        .bind(lease.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Gives back rows `worker_id` holds (all of them, or only those of `batch_id`) so another host
/// can take them at once, and wakes the hosts listening for their projections.
pub async fn release(pool: &PgPool, worker_id: &str, batch_id: Option<Uuid>) -> sqlx::Result<u64> {
    let projections: Vec<(String,)> = sqlx::query_as(RELEASE_SQL)
        .bind(worker_id)
        .bind(batch_id)
        .fetch_all(pool)
        .await?;
    let mut names: Vec<&str> = projections.iter().map(|(p,)| p.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        crate::notify::projection(&mut *pool.acquire().await?, name).await?;
    }
    Ok(projections.len() as u64)
}

/// Fails stuck rows of `spec`'s projection that have no attempt left; returns their seqs.
pub async fn sweep_exhausted(pool: &PgPool, spec: &ProjectionSpec) -> sqlx::Result<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(SWEEP_SQL)
        .bind(&spec.name)
        .bind(spec.tuning.max_attempts)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}
