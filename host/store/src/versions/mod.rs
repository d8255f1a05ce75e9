//! `plugin_versions`: every version of each projection's plugin a host was given, which one is
//! active, which one runs as a canary, and which were refused; `plugin_canaries`: every canary
//! rollout, its counters and its decision. The service loads and swaps the versions
//! (`projector_service::plugin_versions`); this module is the tables' statements.
//!
//! Invariants:
//! - Exactly one version per projection is `active` and at most one is `canary` (partial unique
//!   indexes), and at most one canary per projection is `running`. Every change of them runs in
//!   one transaction that first takes a per-projection advisory lock ([`begin_locked`]), so the
//!   hosts' starts, uploads, rollbacks and canary decisions are serialised per projection.
//! - Activating a version ([`record_active_on`]) ends a running canary: as `promoted` when the
//!   caller has just marked it so ([`end_canary_on`]), otherwise as `aborted`, superseded.
//! - Every activation records its source: `file`, `upload`, `rollback`, `canary`, `promote`.
//! - A version once accepted keeps its status when the same component is refused later
//!   ([`record_rejected`] only touches rejected rows).

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// The active version of a projection as the table holds it, with its component.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredComponent {
    /// Row id.
    pub id: i64,
    /// sha256 of the component (hex).
    pub digest: String,
    /// The label stamped on the events it settles.
    pub version_label: Option<String>,
    /// Where its activation came from.
    pub source: Option<String>,
    /// When it was first given to a host.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    /// When it was last activated.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// The component's bytes.
    pub component: Vec<u8>,
}

/// A version being made active (or a canary).
#[derive(Debug, Clone, Copy)]
pub struct Activation<'a> {
    /// The projection.
    pub projection: &'a str,
    /// sha256 of the component (hex).
    pub digest: &'a str,
    /// `describe().name`.
    pub declared_name: &'a str,
    /// `describe().version`.
    pub declared_version: &'a str,
    /// The label stamped on the events it settles.
    pub version_label: &'a str,
    /// The component's bytes.
    pub component: &'a [u8],
    /// Who activated it (`startup:<worker>`, `file:<path>`, an admin's name).
    pub by: &'a str,
    /// Where the activation came from: `file`, `upload`, `rollback`, `canary` or `promote`.
    pub source: &'a str,
}

/// A row of `plugin_versions`, as the admin API and `projector versions list` show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionRow {
    /// Row id.
    pub id: i64,
    /// Projection.
    pub projection: String,
    /// sha256 of the component.
    pub digest: String,
    /// `describe().version`.
    pub declared_version: Option<String>,
    /// The label stamped on events.
    pub version_label: Option<String>,
    /// active / canary / retired / rejected.
    pub status: String,
    /// Why it was rejected, or why its canary was rolled back or aborted.
    pub reason: Option<String>,
    /// When it was first given to a host.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    /// When it was last activated.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// Where its last activation came from (`file`, `upload`, `rollback`, `canary`, `promote`).
    pub source: Option<String>,
    /// Events whose final outcome it produced.
    pub events: i64,
}

/// The running canary of a projection, with its version's component and counters.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningCanary {
    /// `plugin_canaries.id`.
    pub id: i64,
    /// Percent of aggregates the canary handles.
    pub share_percent: i32,
    /// Canary outcomes after which it is decided.
    pub min_events: i64,
    /// How many percentage points worse than the baseline's a canary rate may be.
    pub margin_percent: f64,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Who started it.
    pub started_by: String,
    /// sha256 of the canary's component.
    pub digest: String,
    /// The canary's version label.
    pub version_label: Option<String>,
    /// Outcomes of the active (baseline) version since the canary started.
    pub baseline_events: i64,
    /// Of them, transient (retried).
    pub baseline_transient: i64,
    /// Of them, terminal (failed).
    pub baseline_terminal: i64,
    /// Outcomes of the canary version.
    pub canary_events: i64,
    /// Of them, transient.
    pub canary_transient: i64,
    /// Of them, terminal.
    pub canary_terminal: i64,
}

/// A canary rollout as `status`, the admin API and `projector versions list` show it.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct CanaryRow {
    /// `plugin_canaries.id`.
    pub id: i64,
    /// The projection.
    pub projection: String,
    /// The version that kept the other aggregates.
    pub baseline_version: Option<String>,
    /// The version tried.
    pub canary_version: Option<String>,
    /// Percent of aggregates the canary handled.
    pub share_percent: i32,
    /// Canary outcomes after which it is decided.
    pub min_events: i64,
    /// Allowed margin, in percentage points.
    pub margin_percent: f64,
    /// `running`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Who started it.
    pub started_by: String,
    /// When it was decided.
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who decided (`auto:<worker>` for the host's own decision).
    pub decided_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Baseline outcomes since the start.
    pub baseline_events: i64,
    /// Of them, transient.
    pub baseline_transient: i64,
    /// Of them, terminal.
    pub baseline_terminal: i64,
    /// Canary outcomes.
    pub canary_events: i64,
    /// Of them, transient.
    pub canary_transient: i64,
    /// Of them, terminal.
    pub canary_terminal: i64,
}

const ACTIVE: &str = include_str!("active.sql");
const KNOWN: &str = include_str!("known.sql");
const LOCK_PROJECTION: &str = include_str!("lock_projection.sql");
const RETIRE_OTHERS: &str = include_str!("retire_others.sql");
const RETIRE_CANARY: &str = include_str!("retire_canary.sql");
const RECORD_ACTIVE: &str = include_str!("record_active.sql");
const RECORD_CANARY: &str = include_str!("record_canary.sql");
const RECORD_REJECTED: &str = include_str!("record_rejected.sql");
const PREVIOUS: &str = include_str!("previous.sql");
const LIST: &str = include_str!("list.sql");
const CANARY_START: &str = include_str!("canary_start.sql");
const CANARY_END: &str = include_str!("canary_end.sql");
const CANARY_RUNNING: &str = include_str!("canary_running.sql");
const CANARY_COUNT: &str = include_str!("canary_count.sql");
const CANARIES: &str = include_str!("canaries.sql");
const CANARY_COMPONENT: &str = include_str!("canary_component.sql");

/// Opens a transaction holding `projection`'s advisory lock until it ends: every change of the
/// projection's versions runs in one (see the module invariants).
pub async fn begin_locked(
    pool: &PgPool,
    projection: &str,
) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_PROJECTION)
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The active version of `projection`, if a host has recorded one with its component.
pub async fn active(pool: &PgPool, projection: &str) -> sqlx::Result<Option<StoredComponent>> {
    active_on(&mut *pool.acquire().await?, projection).await
}

/// [`active`], on `conn` (inside a [`begin_locked`] transaction).
pub async fn active_on(
    conn: &mut PgConnection,
    projection: &str,
) -> sqlx::Result<Option<StoredComponent>> {
    sqlx::query_as(ACTIVE)
        .bind(projection)
        .fetch_optional(conn)
        .await
}

/// Whether a host was ever given the version of `projection` with `digest`: its status and
/// when it was first given.
pub async fn known_on(
    conn: &mut PgConnection,
    projection: &str,
    digest: &str,
) -> sqlx::Result<Option<(String, chrono::DateTime<chrono::Utc>)>> {
    sqlx::query_as(KNOWN)
        .bind(projection)
        .bind(digest)
        .fetch_optional(conn)
        .await
}

/// Makes `version` its projection's one active version (see the module invariants).
pub async fn record_active(pool: &PgPool, version: &Activation<'_>) -> sqlx::Result<()> {
    let mut tx = begin_locked(pool, version.projection).await?;
    record_active_on(&mut tx, version).await?;
    tx.commit().await
}

/// [`record_active`] inside a [`begin_locked`] transaction: ends a running canary as `aborted`
/// (superseded; unless the caller ended it already), retires the canary and the active version
/// unless one of them is `version`, then records `version` as active.
pub async fn record_active_on(
    conn: &mut PgConnection,
    version: &Activation<'_>,
) -> sqlx::Result<()> {
    let why = format!(
        "superseded: {} activated ({}) by {}",
        version.version_label, version.source, version.by
    );
    end_canary_on(conn, version.projection, "aborted", version.by, &why).await?;
    sqlx::query(RETIRE_CANARY)
        .bind(version.projection)
        .bind(version.digest)
        .bind(&why)
        .execute(&mut *conn)
        .await?;
    sqlx::query(RETIRE_OTHERS)
        .bind(version.projection)
        .bind(version.digest)
        .execute(&mut *conn)
        .await?;
    sqlx::query(RECORD_ACTIVE)
        .bind(version.projection)
        .bind(version.digest)
        .bind(version.declared_name)
        .bind(version.declared_version)
        .bind(version.version_label)
        .bind(version.component)
        .bind(version.by)
        .bind(version.source)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records that the component with `digest` was refused as a version of `projection`, and why.
pub async fn record_rejected(
    pool: &PgPool,
    projection: &str,
    digest: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(RECORD_REJECTED)
        .bind(projection)
        .bind(digest)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

/// The component of the version that was active before `projection`'s current one, if any.
pub async fn previous(pool: &PgPool, projection: &str) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar(PREVIOUS)
        .bind(projection)
        .fetch_optional(pool)
        .await
}

/// Every recorded version of `projection` with the number of events it settled, read through
/// `pool` (the admin API's read pool).
pub async fn list(pool: &PgPool, projection: &str) -> sqlx::Result<Vec<VersionRow>> {
    sqlx::query_as(LIST).bind(projection).fetch_all(pool).await
}

/// A canary being started.
#[derive(Debug, Clone, Copy)]
pub struct CanaryStart<'a> {
    /// The version tried.
    pub version: Activation<'a>,
    /// `plugin_versions.id` of the active version, which keeps the other aggregates.
    pub baseline_id: i64,
    /// Percent of aggregates (1 to 99).
    pub share_percent: i32,
    /// Canary outcomes after which it is decided.
    pub min_events: i64,
    /// Allowed margin, in percentage points.
    pub margin_percent: f64,
}

/// Inside a [`begin_locked`] transaction in which no canary runs: records `start.version` as
/// the projection's canary and the rollout; returns the rollout's id.
pub async fn start_canary_on(
    conn: &mut PgConnection,
    start: &CanaryStart<'_>,
) -> sqlx::Result<i64> {
    let v = &start.version;
    let version_id: i64 = sqlx::query_scalar(RECORD_CANARY)
        .bind(v.projection)
        .bind(v.digest)
        .bind(v.declared_name)
        .bind(v.declared_version)
        .bind(v.version_label)
        .bind(v.component)
        .bind(v.by)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query_scalar(CANARY_START)
        .bind(v.projection)
        .bind(start.baseline_id)
        .bind(version_id)
        .bind(start.share_percent)
        .bind(start.min_events)
        .bind(start.margin_percent)
        .bind(v.by)
        .fetch_one(conn)
        .await
}

/// Ends `projection`'s running canary, if any, as `state` (`promoted`, `rolled_back`,
/// `aborted`), decided by `by` for `reason`; returns its id. It does not touch the versions:
/// the caller then activates the canary's version ([`record_active_on`]) or retires it
/// ([`retire_canary_on`]).
pub async fn end_canary_on(
    conn: &mut PgConnection,
    projection: &str,
    state: &str,
    by: &str,
    reason: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(CANARY_END)
        .bind(projection)
        .bind(state)
        .bind(by)
        .bind(reason)
        .fetch_optional(conn)
        .await
}

/// Retires `projection`'s canary version, recording `reason` on it; the active version stays.
pub async fn retire_canary_on(
    conn: &mut PgConnection,
    projection: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(RETIRE_CANARY)
        .bind(projection)
        .bind("")
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// `projection`'s running canary, if any, read on `conn` (in a [`begin_locked`] transaction no
/// other host can end or start one meanwhile).
pub async fn running_canary_on(
    conn: &mut PgConnection,
    projection: &str,
) -> sqlx::Result<Option<RunningCanary>> {
    sqlx::query_as(CANARY_RUNNING)
        .bind(projection)
        .fetch_optional(conn)
        .await
}

/// `projection`'s running canary, if any.
pub async fn running_canary(
    pool: &PgPool,
    projection: &str,
) -> sqlx::Result<Option<RunningCanary>> {
    running_canary_on(&mut *pool.acquire().await?, projection).await
}

/// The component of the version canary `canary_id` runs.
pub async fn canary_component(pool: &PgPool, canary_id: i64) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar(CANARY_COMPONENT)
        .bind(canary_id)
        .fetch_optional(pool)
        .await
}

/// Outcomes of one side of a canary, from one settled sub-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideOutcomes {
    /// Outcomes recorded (one per event attempt; events handed back untried are not counted).
    pub events: i64,
    /// Of them, transient: the event was retried.
    pub transient: i64,
    /// Of them, terminal: the event failed.
    pub terminal: i64,
}

/// Adds `outcomes` to canary `canary_id`'s counters for its canary side (`canary_side`) or its
/// baseline; returns the canary's outcome count so far, or `None` once the canary has ended.
pub async fn count_canary(
    pool: &PgPool,
    canary_id: i64,
    canary_side: bool,
    outcomes: SideOutcomes,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(CANARY_COUNT)
        .bind(canary_id)
        .bind(canary_side)
        .bind(outcomes.events)
        .bind(outcomes.transient)
        .bind(outcomes.terminal)
        .fetch_optional(pool)
        .await
}

/// The latest canaries of `projection` (of every projection when `None`), latest first.
pub async fn canaries(pool: &PgPool, projection: Option<&str>) -> sqlx::Result<Vec<CanaryRow>> {
    sqlx::query_as(CANARIES)
        .bind(projection)
        .fetch_all(pool)
        .await
}
