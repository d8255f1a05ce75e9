//! A rebuild's statements: its record in `projector_rebuilds`, the one-rebuild-per-projection
//! lock, the source's snapshot, the outbox mode's events, and the shadow tables of a
//! zero-downtime rebuild ([`shadow`]). The rebuild itself (batches, the plugin, catch-up, the
//! switch) is `projector_service::rebuild`; the transitions it makes on outbox rows
//! (catch-up's reads, marking superseded events done, the pause) are in
//! [`crate::outbox::operator`].
//!
//! Invariants:
//! - One rebuild per projection at a time: [`try_lock`] takes a session advisory lock on the
//!   connection the caller keeps for the whole rebuild, and [`unlock`] releases it.
//! - Every rebuild is a row, from [`start`] to [`finish`], so that the hosts (which may be other
//!   processes) can export the latest one as metrics ([`latest_finished`]).
//! - The source is read in one `REPEATABLE READ READ ONLY` snapshot as the projection's source
//!   role ([`open_source`]). Its SQL comes from the configuration or the command line, checked by
//!   the caller; `SET LOCAL ROLE` is built here with the role's name quoted (an identifier cannot
//!   be a parameter).

pub mod shadow;

use futures_core::stream::BoxStream;
use projector_core::outbox::ClaimedEvent;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::sql_roles::quote_ident;

/// How the rebuilt rows reach the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the plugin into the live sinks.
    Direct,
    /// As outbox events for the running hosts.
    Outbox,
    /// Through the plugin into shadow tables, switched in when caught up.
    ZeroDowntime,
}

impl Mode {
    /// The name recorded in `projector_rebuilds.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Outbox => "outbox",
            Mode::ZeroDowntime => "zero_downtime",
        }
    }
}

/// A rebuild about to run.
#[derive(Debug, Clone, Copy)]
pub struct NewRebuild<'a> {
    /// The projection.
    pub projection: &'a str,
    /// How.
    pub mode: Mode,
    /// The source's name, or `sql` for SQL given on the command line.
    pub source: &'a str,
    /// Whether the granted tables are emptied first.
    pub truncate: bool,
    /// Who started it.
    pub started_by: &'a str,
}

/// A rebuild's counts (so far, or final).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Source rows read.
    pub rows_read: u64,
    /// Rows applied (or emitted as outbox events).
    pub rows_applied: u64,
    /// Rows that failed.
    pub rows_failed: u64,
    /// Events written after the snapshot, applied to the new model.
    pub caught_up: u64,
}

/// How a rebuild ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every row applied (and, zero-downtime, the new model switched in).
    Succeeded,
    /// A row failed, or the rebuild stopped with an error.
    Failed,
}

impl Ending {
    /// The name recorded in `projector_rebuilds.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Succeeded => "succeeded",
            Ending::Failed => "failed",
        }
    }
}

/// A row of `projector_rebuilds`, as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RebuildRecord {
    /// Its id.
    pub id: i64,
    /// `direct`, `outbox` or `zero_downtime`.
    pub mode: String,
    /// The source's name, or `sql`.
    pub source: String,
    /// Whether the granted tables were emptied first.
    pub truncate: bool,
    /// Who started it.
    pub started_by: String,
    /// When.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it finished, if it did.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// Source rows read.
    pub rows_read: i64,
    /// Rows applied.
    pub rows_applied: i64,
    /// Rows that failed.
    pub rows_failed: i64,
    /// Events caught up.
    pub caught_up: i64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The latest finished rebuild of a projection, as the `projector_rebuild_*` gauges show it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FinishedRebuild {
    /// The projection.
    pub projection: String,
    /// How long it ran, in seconds.
    pub duration_seconds: f64,
    /// When it finished, in seconds since the epoch.
    pub finished_at_seconds: f64,
    /// Whether it succeeded.
    pub succeeded: bool,
}

const TRY_LOCK: &str = include_str!("try_lock.sql");
const UNLOCK: &str = include_str!("unlock.sql");
const START: &str = include_str!("start.sql");
const PROGRESS: &str = include_str!("progress.sql");
const FINISH: &str = include_str!("finish.sql");
const RECENT: &str = include_str!("recent.sql");
const LATEST_FINISHED: &str = include_str!("latest_finished.sql");
const CURRENT_SNAPSHOT: &str = include_str!("current_snapshot.sql");
const EMIT: &str = include_str!("emit.sql");

/// Takes the rebuild lock of `projection` on `conn`'s session without waiting; `false` when
/// another rebuild holds it.
pub async fn try_lock(conn: &mut PgConnection, projection: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(TRY_LOCK)
        .bind(projection)
        .fetch_one(conn)
        .await
}

/// Releases the lock [`try_lock`] took on `conn`.
pub async fn unlock(conn: &mut PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query(UNLOCK).bind(projection).execute(conn).await?;
    Ok(())
}

/// Records `rebuild` as started; returns its id.
pub async fn start(pool: &PgPool, rebuild: &NewRebuild<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(START)
        .bind(rebuild.projection)
        .bind(rebuild.mode.as_str())
        .bind(rebuild.source)
        .bind(rebuild.truncate)
        .bind(rebuild.started_by)
        .fetch_one(pool)
        .await
}

/// Records rebuild `id`'s counts so far.
pub async fn record_progress(pool: &PgPool, id: i64, counts: &Counts) -> sqlx::Result<()> {
    sqlx::query(PROGRESS)
        .bind(id)
        .bind(counts.rows_read as i64)
        .bind(counts.rows_applied as i64)
        .bind(counts.rows_failed as i64)
        .bind(counts.caught_up as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records rebuild `id` as finished, how, with its final counts and the error, if any.
pub async fn finish(
    pool: &PgPool,
    id: i64,
    ending: Ending,
    counts: &Counts,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(FINISH)
        .bind(id)
        .bind(ending.as_str())
        .bind(counts.rows_read as i64)
        .bind(counts.rows_applied as i64)
        .bind(counts.rows_failed as i64)
        .bind(counts.caught_up as i64)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// The 20 latest rebuilds of `projection`, newest first.
pub async fn recent(pool: &PgPool, projection: &str) -> sqlx::Result<Vec<RebuildRecord>> {
    sqlx::query_as(RECENT)
        .bind(projection)
        .fetch_all(pool)
        .await
}

/// The latest finished rebuild of each of `projections` that had one.
pub async fn latest_finished(
    pool: &PgPool,
    projections: &[String],
) -> sqlx::Result<Vec<FinishedRebuild>> {
    sqlx::query_as(LATEST_FINISHED)
        .bind(projections)
        .fetch_all(pool)
        .await
}

/// Opens the source's read: a `REPEATABLE READ READ ONLY` transaction as `reader` (the
/// projection's source role, see [`crate::sql_roles::source_role`]), and its snapshot as text.
/// The snapshot is taken before the role is assumed, as the host.
pub async fn open_source(
    pool: &PgPool,
    reader: &str,
) -> sqlx::Result<(Transaction<'static, Postgres>, String)> {
    let mut tx = pool.begin().await?;
    crate::db::read_only_snapshot(&mut tx).await?;
    let snapshot: String = sqlx::query_scalar(CURRENT_SNAPSHOT)
        .fetch_one(&mut *tx)
        .await?;
    // Built: a role is an identifier, not a parameter.
    sqlx::raw_sql(&format!("SET LOCAL ROLE {}", quote_ident(reader)))
        .execute(&mut *tx)
        .await?;
    Ok((tx, snapshot))
}

/// The rows of the source query `sql` (from the configuration or the command line, checked by
/// the caller) on `conn`, the transaction [`open_source`] opened, in the order it returns them.
pub fn source_rows<'c>(
    conn: &'c mut PgConnection,
    sql: &'c str,
) -> BoxStream<'c, sqlx::Result<PgRow>> {
    sqlx::query(sql).fetch(conn)
}

/// Outbox mode: `batch` as new outbox events of `projection`, with fresh ids; each source row's
/// id goes in the `projector-rebuild-source-id` header. Returns how many were written.
pub async fn emit(
    conn: &mut PgConnection,
    projection: &str,
    batch: &[ClaimedEvent],
) -> sqlx::Result<u64> {
    let mut event_types = Vec::new();
    let mut aggregate_types = Vec::new();
    let mut aggregate_ids = Vec::new();
    let mut payloads = Vec::new();
    let mut occurred = Vec::new();
    let mut headers = Vec::new();
    for e in batch {
        event_types.push(e.event_type.clone());
        aggregate_types.push(e.aggregate_type.clone());
        aggregate_ids.push(e.aggregate_id.clone());
        payloads.push(e.payload.clone());
        occurred.push(e.occurred_at.clone());
        let mut h: serde_json::Map<String, serde_json::Value> = e
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        h.insert(
            "projector-rebuild-source-id".into(),
            serde_json::Value::String(e.id.to_string()),
        );
        headers.push(serde_json::Value::Object(h).to_string());
    }
    Ok(sqlx::query(EMIT)
        .bind(projection)
        .bind(&event_types)
        .bind(&aggregate_types)
        .bind(&aggregate_ids)
        .bind(&payloads)
        .bind(&occurred)
        .bind(&headers)
        .execute(conn)
        .await?
        .rows_affected())
}
