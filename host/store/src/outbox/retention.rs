//! Retention: deleting `done` rows older than `OUTBOX_RETENTION_DONE_SECONDS`, oldest first, in
//! small batches (`OUTBOX_RETENTION_BATCH_SIZE`), in the background every
//! `OUTBOX_RETENTION_INTERVAL_SECONDS` or once with `projector prune`. Off by default.
//!
//! Invariants:
//! - Only `done` rows are deleted: pending, processing, failed and skipped rows (and the audit
//!   trail of replays and skips) stay whatever their age.
//! - Claims never wait for retention: each batch is its own short transaction and takes its rows
//!   with `SKIP LOCKED`, and claiming never reads `done` rows (they are in neither claim index).
//!   Per-aggregate ordering looks only at unfinished rows, so deleting finished ones changes no
//!   claim's answer.

use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

const PRUNE_BATCH: &str = include_str!("retention_prune_batch.sql");

/// Deletes `done` rows older than `older_than`, `batch_size` at a time, until none is left (or
/// `max_batches` batches ran); returns how many rows were deleted per projection.
pub async fn prune(
    pool: &PgPool,
    older_than: Duration,
    batch_size: i64,
    max_batches: Option<u64>,
) -> sqlx::Result<BTreeMap<String, u64>> {
    let mut deleted = BTreeMap::new();
    let mut batches = 0;
    loop {
        let rows: Vec<String> = sqlx::query_scalar(PRUNE_BATCH)
            .bind(older_than.as_secs_f64())
            .bind(batch_size)
            .fetch_all(pool)
            .await?;
        let n = rows.len();
        for projection in rows {
            *deleted.entry(projection).or_insert(0) += 1;
        }
        batches += 1;
        if n < batch_size as usize || max_batches.is_some_and(|m| batches >= m) {
            return Ok(deleted);
        }
        // Let claims and settles have the server between batches.
        tokio::task::yield_now().await;
    }
}
