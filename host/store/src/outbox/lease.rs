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

const RENEW_SQL: &str = include_str!("lease_renew.sql");
const RELEASE_SQL: &str = include_str!("lease_release.sql");
const SWEEP_SQL: &str = include_str!("lease_sweep_exhausted.sql");
const SWEEP_DUE_SQL: &str = include_str!("lease_sweep_due.sql");

/// Whether this host should sweep `projection` now: true for at most one host per about `every`
/// (the last sweep by any host is older than four fifths of it), and the sweep is then recorded
/// as done (migration 0012). The stuck-work sweeps read the whole backlog; run by every host on
/// every tick, they and the gauge reading took four hosts a quarter as much database time as
/// all their claims and settles (migration 0012 has the figures).
pub async fn sweep_due(pool: &PgPool, projection: &str, every: Duration) -> sqlx::Result<bool> {
    let taken: Option<String> = sqlx::query_scalar(SWEEP_DUE_SQL)
        .bind(projection)
        .bind(every.as_secs_f64() * 0.8)
        .fetch_optional(pool)
        .await?;
    Ok(taken.is_some())
}

/// Extends the lease of the rows `seqs` that `batch_id` still holds; returns how many it holds.
pub async fn renew(
    pool: &PgPool,
    batch_id: Uuid,
    seqs: &[i64],
    lease: Duration,
) -> sqlx::Result<u64> {
    let done = sqlx::query(RENEW_SQL)
        .bind(batch_id)
        .bind(lease.as_secs_f64())
        .bind(seqs)
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
