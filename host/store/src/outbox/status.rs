//! `projector status`: the state of every projection in one consistent read, replacing the
//! seeds' "common SQL" appendix.
//!
//! Invariants:
//! - Every number comes from one `REPEATABLE READ` snapshot, so the counts add up: the per-status
//!   counts sum to the projection's rows, `stuck` is a subset of `processing`, `blocked` of
//!   `pending`, and `failed_by_reason` sums to `failed`.
//! - `stuck` is processing under an expired lease; `blocked` is pending behind a failed event of
//!   the same aggregate (it cannot run until that one is replayed or skipped).
//! - A projection is listed when it has events, a plugin version or a pause.

use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;

/// Every status an outbox row can have, in the order the table shows them.
pub const STATUSES: [&str; 5] = ["pending", "processing", "done", "failed", "skipped"];

/// One projection's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectionStatus {
    /// The projection.
    pub projection: String,
    /// Rows per status (every status present, zero when none).
    pub counts: BTreeMap<String, i64>,
    /// Processing rows whose lease expired.
    pub stuck: i64,
    /// Pending rows behind a failed row of their aggregate.
    pub blocked: i64,
    /// Failed rows by `error_reason` (`""` when none was recorded).
    pub failed_by_reason: BTreeMap<String, i64>,
    /// Seconds since the oldest pending row was created; `None` when nothing is pending.
    pub oldest_pending_age_seconds: Option<f64>,
    /// The active plugin version, if a host has recorded one.
    pub plugin: Option<ActivePlugin>,
    /// The pause, if the projection is paused.
    pub paused: Option<Pause>,
    /// The running canary, else the latest decided one, if the projection had any.
    pub canary: Option<crate::versions::CanaryRow>,
}

/// The plugin version a projection's hosts run.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct ActivePlugin {
    /// `name@version#digest-prefix`, as stamped on the events.
    pub version: Option<String>,
    /// sha256 of the component.
    pub digest: String,
    /// When it became active.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// Where the activation came from: `file`, `upload`, `rollback`, `canary` or `promote`.
    pub source: Option<String>,
}

/// Who paused a projection, when and why.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct Pause {
    /// Who.
    pub paused_by: String,
    /// When.
    pub paused_at: chrono::DateTime<chrono::Utc>,
    /// Why.
    pub reason: Option<String>,
}

const COUNTS: &str = include_str!("status_counts.sql");
const UNFINISHED: &str = include_str!("status_unfinished.sql");
const BLOCKED: &str = include_str!("status_blocked.sql");
const FAILED_BY_REASON: &str = include_str!("status_failed_by_reason.sql");
const PLUGINS: &str = include_str!("status_plugins.sql");
const PAUSES: &str = include_str!("status_pauses.sql");
const CANARIES: &str = include_str!("../versions/canaries.sql");

/// The state of `projection` (or of every projection), sorted by name.
pub async fn status(
    pool: &PgPool,
    projection: Option<&str>,
) -> sqlx::Result<Vec<ProjectionStatus>> {
    let mut tx = pool.begin().await?;
    crate::db::read_only_snapshot(&mut tx).await?;
    let mut all: BTreeMap<String, ProjectionStatus> = BTreeMap::new();
    fn entry<'a>(
        all: &'a mut BTreeMap<String, ProjectionStatus>,
        name: &str,
    ) -> &'a mut ProjectionStatus {
        all.entry(name.to_owned())
            .or_insert_with(|| ProjectionStatus {
                projection: name.to_owned(),
                counts: STATUSES.iter().map(|s| (s.to_string(), 0)).collect(),
                stuck: 0,
                blocked: 0,
                failed_by_reason: BTreeMap::new(),
                oldest_pending_age_seconds: None,
                plugin: None,
                paused: None,
                canary: None,
            })
    }
    let counts: Vec<(String, String, i64)> = sqlx::query_as(COUNTS)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, status, n) in counts {
        entry(&mut all, &name).counts.insert(status, n);
    }
    let unfinished: Vec<(String, i64, Option<f64>)> = sqlx::query_as(UNFINISHED)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, stuck, age) in unfinished {
        let e = entry(&mut all, &name);
        e.stuck = stuck;
        e.oldest_pending_age_seconds = age;
    }
    let blocked: Vec<(String, i64)> = sqlx::query_as(BLOCKED)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, n) in blocked {
        entry(&mut all, &name).blocked = n;
    }
    let failed: Vec<(String, String, i64)> = sqlx::query_as(FAILED_BY_REASON)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, reason, n) in failed {
        entry(&mut all, &name).failed_by_reason.insert(reason, n);
    }
    type PluginRow = (
        String,
        Option<String>,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
        Option<String>,
    );
    let plugins: Vec<PluginRow> = sqlx::query_as(PLUGINS)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, version, digest, activated_at, activated_by, source) in plugins {
        entry(&mut all, &name).plugin = Some(ActivePlugin {
            version,
            digest,
            activated_at,
            activated_by,
            source,
        });
    }
    // Latest first: the first row of a projection is its running or latest canary.
    let canaries: Vec<crate::versions::CanaryRow> = sqlx::query_as(CANARIES)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for c in canaries {
        let e = entry(&mut all, &c.projection.clone());
        if e.canary.is_none() {
            e.canary = Some(c);
        }
    }
    let pauses: Vec<(
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<String>,
    )> = sqlx::query_as(PAUSES)
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
    for (name, paused_by, paused_at, reason) in pauses {
        entry(&mut all, &name).paused = Some(Pause {
            paused_by,
            paused_at,
            reason,
        });
    }
    tx.commit().await?;
    if let Some(p) = projection {
        entry(&mut all, p);
    }
    Ok(all.into_values().collect())
}

/// The numbers behind one projection's outbox gauges (`outbox_lag_events` and friends).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Gauges {
    /// The projection.
    pub projection: String,
    /// Unfinished events (pending or processing).
    pub lag: i64,
    /// Processing under a live lease.
    pub inflight: i64,
    /// Processing under an expired lease.
    pub stuck: i64,
    /// Pending behind a failed event of their aggregate.
    pub blocked: i64,
    /// Seconds since the oldest unfinished event was created.
    pub oldest_age_seconds: f64,
}

const GAUGES: &str = include_str!("status_gauges.sql");
const GAUGES_DUE: &str = include_str!("status_gauges_due.sql");
const GAUGES_READ: &str = include_str!("status_gauges_read.sql");

/// The gauges of `projections`, read from the outbox at most about once per `every` across all
/// hosts (migration 0012): the refresh of each projection is taken by one host when the stored
/// reading is older than four fifths of `every` (so a host whose own tick comes due still
/// refreshes, and a reading is never much older than `every`); that host reads the outbox (one
/// query, never per scrape) and stores the reading; every host returns the stored readings. A
/// projection not returned has never been read.
pub async fn gauges(
    pool: &PgPool,
    projections: &[String],
    every: std::time::Duration,
) -> sqlx::Result<Vec<Gauges>> {
    let mut tx = pool.begin().await?;
    let due: Vec<String> = sqlx::query_scalar(GAUGES_DUE)
        .bind(projections)
        .bind(every.as_secs_f64() * 0.8)
        .fetch_all(&mut *tx)
        .await?;
    if !due.is_empty() {
        sqlx::query(GAUGES).bind(&due).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query_as(GAUGES_READ)
        .bind(projections)
        .fetch_all(pool)
        .await
}

/// The human-readable table `projector status` prints.
pub fn render_table(rows: &[ProjectionStatus]) -> String {
    let mut header = vec!["projection".to_owned()];
    header.extend(STATUSES.iter().map(|s| s.to_string()));
    header.extend(
        ["stuck", "blocked", "oldest_pending", "plugin", "paused"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut table = vec![header];
    for r in rows {
        let mut line = vec![r.projection.clone()];
        line.extend(STATUSES.iter().map(|s| r.counts[*s].to_string()));
        line.push(r.stuck.to_string());
        line.push(r.blocked.to_string());
        line.push(
            r.oldest_pending_age_seconds
                .map(|a| format!("{a:.1}s"))
                .unwrap_or_else(|| "-".into()),
        );
        line.push(match &r.plugin {
            Some(p) => format!(
                "{} ({})",
                p.version.as_deref().unwrap_or("-"),
                p.source.as_deref().unwrap_or("-")
            ),
            None => "-".into(),
        });
        line.push(match &r.paused {
            Some(p) => format!("yes (by {})", p.paused_by),
            None => "no".into(),
        });
        table.push(line);
    }
    let mut out = aligned(&table);
    for (r, c) in rows
        .iter()
        .filter_map(|r| r.canary.as_ref().map(|c| (r, c)))
    {
        out.push_str(&render_canary(&r.projection, c));
    }
    for r in rows.iter().filter(|r| !r.failed_by_reason.is_empty()) {
        let reasons: Vec<String> = r
            .failed_by_reason
            .iter()
            .map(|(reason, n)| {
                let reason = if reason.is_empty() { "(none)" } else { reason };
                format!("{reason}={n}")
            })
            .collect();
        out.push_str(&format!(
            "failed in {}: {}\n",
            r.projection,
            reasons.join(", ")
        ));
    }
    out
}

/// One line on a projection's canary: state, share, outcomes and failure rates per version, and
/// the decision with its reason once taken.
pub fn render_canary(projection: &str, c: &crate::versions::CanaryRow) -> String {
    let rate = |n: i64, of: i64| {
        if of == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * n as f64 / of as f64)
        }
    };
    let side = |label: &Option<String>, events: i64, transient: i64, terminal: i64| {
        format!(
            "{} {events} outcomes, transient {}, terminal {}",
            label.as_deref().unwrap_or("-"),
            rate(transient, events),
            rate(terminal, events)
        )
    };
    let mut line = format!(
        "canary of {projection}: {} ({}% of aggregates, decided after {} outcomes, margin {} points); canary {}; baseline {}",
        c.state,
        c.share_percent,
        c.min_events,
        c.margin_percent,
        side(&c.canary_version, c.canary_events, c.canary_transient, c.canary_terminal),
        side(&c.baseline_version, c.baseline_events, c.baseline_transient, c.baseline_terminal),
    );
    if let Some(reason) = &c.reason {
        line.push_str(&format!(
            "; by {}: {reason}",
            c.decided_by.as_deref().unwrap_or("-")
        ));
    }
    line.push('\n');
    line
}

/// `table` (a header line, then rows) as text: each column padded to its widest cell (in
/// characters), two spaces between columns, one line per row.
pub(crate) fn aligned(table: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..table.first().map_or(0, Vec::len))
        .map(|c| {
            table
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
