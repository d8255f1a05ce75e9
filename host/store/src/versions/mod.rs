//! `plugin_versions`: every version of each projection's plugin a host was given, which one is
//! active, and which were refused. The service loads and swaps the versions
//! (`projector_service::plugin_versions`); this module is the table's statements.
//!
//! Invariants:
//! - Exactly one version per projection is `active` (a partial unique index). Activating one is
//!   [`record_active`]: one transaction that takes a per-projection advisory lock, retires the
//!   other active version, then records this one.
//! - A version once accepted keeps its status when the same component is refused later
//!   ([`record_rejected`] only touches rejected rows).

use serde::Serialize;
use sqlx::PgPool;

/// A version of a projection as the table holds it, with its component.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredComponent {
    /// sha256 of the component (hex).
    pub digest: String,
    /// The component's bytes.
    pub component: Vec<u8>,
}

/// A version being made active.
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
    /// active / retired / rejected.
    pub status: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// When it was first given to a host.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    /// When it was last activated.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// Events whose final outcome it produced.
    pub events: i64,
}

const ACTIVE: &str = include_str!("active.sql");
const LOCK_PROJECTION: &str = include_str!("lock_projection.sql");
const RETIRE_OTHERS: &str = include_str!("retire_others.sql");
const RECORD_ACTIVE: &str = include_str!("record_active.sql");
const RECORD_REJECTED: &str = include_str!("record_rejected.sql");
const PREVIOUS: &str = include_str!("previous.sql");
const LIST: &str = include_str!("list.sql");

/// The active version of `projection`, if a host has recorded one with its component.
pub async fn active(pool: &PgPool, projection: &str) -> sqlx::Result<Option<StoredComponent>> {
    sqlx::query_as(ACTIVE)
        .bind(projection)
        .fetch_optional(pool)
        .await
}

/// Makes `version` its projection's one active version (see the module invariants).
pub async fn record_active(pool: &PgPool, version: &Activation<'_>) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_PROJECTION)
        .bind(version.projection)
        .execute(&mut *tx)
        .await?;
    sqlx::query(RETIRE_OTHERS)
        .bind(version.projection)
        .bind(version.digest)
        .execute(&mut *tx)
        .await?;
    sqlx::query(RECORD_ACTIVE)
        .bind(version.projection)
        .bind(version.digest)
        .bind(version.declared_name)
        .bind(version.declared_version)
        .bind(version.version_label)
        .bind(version.component)
        .bind(version.by)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
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
