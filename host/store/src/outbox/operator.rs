//! Operator transitions: replay (`failed` → `pending`, attempts reset, due now, audited), skip
//! (`failed` → `skipped`, a terminal state that lets the aggregate continue, audited), and
//! pause/resume of a projection (a paused projection claims nothing; the pause is a row, so it
//! survives restarts).
//!
//! The rebuild's transition lives here too: [`supersede_in_snapshot`] marks `done` the unfinished
//! events a zero-downtime rebuild already built into its new model.
//!
//! Every replay and skip, dry runs included, appends one `replay_audit` row naming who, when,
//! why, the filter, how many rows and which ids, in the same transaction as the change itself.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Which failed events an operator acts on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    /// Only events failed with this reason.
    pub error_reason: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only these events.
    pub ids: Option<Vec<Uuid>>,
    /// At most this many (oldest first).
    pub limit: Option<i64>,
}

/// What an operator action did (or, dry, would do): its counts and the ids it concerned. (Not an
/// outcome in the plugin sense: see `projector_core::outbox`.)
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    /// `replay` or `skip`.
    pub action: &'static str,
    /// The projection.
    pub projection: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The events concerned, oldest first.
    pub event_ids: Vec<Uuid>,
}

const SELECT_FAILED: &str = include_str!("operator_select_failed.sql");
const REPLAY: &str = include_str!("operator_replay.sql");
const SKIP: &str = include_str!("operator_skip.sql");
const AUDIT: &str = include_str!("operator_audit.sql");
const PAUSE: &str = include_str!("operator_pause.sql");
const RESUME: &str = include_str!("operator_resume.sql");
const DONE_AFTER_SNAPSHOT: &str = include_str!("operator_done_after_snapshot.sql");
const SUPERSEDE: &str = include_str!("operator_supersede.sql");
const IN_FLIGHT: &str = include_str!("operator_in_flight.sql");
const AUDIT_TRAIL: &str = include_str!("operator_audit_trail.sql");

/// Replays (`skip == false`) or skips the failed events of `projection` that `filter` selects.
pub async fn act(
    pool: &PgPool,
    projection: &str,
    filter: &Filter,
    by: &str,
    reason: &str,
    dry_run: bool,
    skip: bool,
) -> sqlx::Result<ActionReport> {
    let action = if skip { "skip" } else { "replay" };
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(SELECT_FAILED)
        .bind(projection)
        .bind(&filter.error_reason)
        .bind(&filter.event_type)
        .bind(&filter.ids)
        .bind(filter.limit.unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
    if !dry_run && !ids.is_empty() {
        let change = if skip {
            sqlx::query(SKIP).bind(&ids)
        } else {
            sqlx::query(REPLAY).bind(&ids).bind(by).bind(reason)
        };
        change.execute(&mut *tx).await?;
        // Replayed events and the events a skip unblocks are due now: wake the hosts.
        crate::notify::projection(&mut tx, projection).await?;
    }
    sqlx::query(AUDIT)
        .bind(action)
        .bind(projection)
        .bind(by)
        .bind(reason)
        .bind(sqlx::types::Json(filter))
        .bind(dry_run)
        .bind(ids.len() as i32)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ActionReport {
        action,
        projection: projection.to_owned(),
        dry_run,
        event_ids: ids,
    })
}

/// Pauses `projection` (idempotent).
pub async fn pause(
    pool: &PgPool,
    projection: &str,
    by: &str,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(PAUSE)
        .bind(projection)
        .bind(by)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

/// Resumes `projection` and wakes its hosts; returns whether it was paused.
pub async fn resume(pool: &PgPool, projection: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let removed = resume_in(&mut tx, projection, None).await?;
    tx.commit().await?;
    Ok(removed)
}

/// Resumes `projection` inside the caller's transaction, only if `paused_by` is `by` when given
/// (a rebuild lifts its own pause and leaves an operator's), and wakes its hosts when that
/// transaction commits. Returns whether a pause was removed.
pub async fn resume_in(
    conn: &mut sqlx::PgConnection,
    projection: &str,
    by: Option<&str>,
) -> sqlx::Result<bool> {
    let removed = sqlx::query(RESUME)
        .bind(projection)
        .bind(by)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    crate::notify::projection(conn, projection).await?;
    Ok(removed > 0)
}

/// The events of `projection` a zero-downtime rebuild must still apply to its new model: `done`
/// (so applied to the old model) but written after the rebuild's snapshot (so not in the source
/// rows it read), minus those it already applied (`applied`, by seq). Oldest first.
pub async fn done_after_snapshot(
    db: &mut sqlx::PgConnection,
    projection: &str,
    snapshot: &str,
    applied: &[i64],
) -> sqlx::Result<Vec<super::ClaimedEvent>> {
    let rows: Vec<super::claim::Row> = sqlx::query_as(DONE_AFTER_SNAPSHOT)
        .bind(projection)
        .bind(snapshot)
        .bind(applied)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(super::claim::to_event).collect())
}

/// The rebuild transition (`pending`/`processing` → `done`): a zero-downtime rebuild built its
/// model from source rows read in `snapshot`; every unfinished event written in that snapshot is
/// already in the model and must not be applied again. Runs in the switch's transaction, while
/// the projection is paused and nothing of it is in flight; a batch that was claimed anyway is
/// fenced off (its settle finds the row no longer `processing` and changes nothing). Returns the
/// number of rows. `label` is stamped as the rows' `projection_version`.
pub async fn supersede_in_snapshot(
    tx: &mut sqlx::PgConnection,
    projection: &str,
    snapshot: &str,
    label: &str,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(SUPERSEDE)
        .bind(projection)
        .bind(snapshot)
        .bind(label)
        .execute(tx)
        .await?
        .rows_affected())
}

/// How many events of `projection` are processing under a live lease.
pub async fn in_flight(db: &mut sqlx::PgConnection, projection: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(IN_FLIGHT)
        .bind(projection)
        .fetch_one(db)
        .await
}

/// A `replay_audit` row, as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// `replay` or `skip`.
    pub action: String,
    /// Who.
    pub performed_by: String,
    /// When.
    pub performed_at: chrono::DateTime<chrono::Utc>,
    /// Why.
    pub reason: String,
    /// The [`Filter`], as JSON.
    pub filter: serde_json::Value,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// How many events it concerned.
    pub row_count: i32,
    /// Which.
    pub event_ids: Vec<Uuid>,
}

/// The 100 latest replays and skips of `projection` (dry runs included), newest first.
pub async fn audit_trail(pool: &PgPool, projection: &str) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(AUDIT_TRAIL)
        .bind(projection)
        .fetch_all(pool)
        .await
}
