//! `projector rebuild`: rebuilding a projection's read model from its source of truth (seed 004:
//! `chronicle_events` → `chronicle_entries`).
//!
//! The source is a query returning one row per event, with the columns `id` (uuid),
//! `event_type`, `aggregate_id` and `payload` (jsonb or JSON text), and optionally
//! `aggregate_type`, `occurred_at` (timestamptz) and `seq` (bigint). It is named in the
//! projection's `[projection.sources]` or given as SQL with `--source`. It is read in one
//! `REPEATABLE READ` snapshot, in the order it returns, in batches of the projection's batch size.
//!
//! Three modes:
//! - **direct**: the rows go through the projection's plugin (the version its hosts run, else
//!   the configured file) with the projection's own capabilities and grants, straight into the
//!   live sinks; `--truncate` empties the projection's granted tables first. Readers see the
//!   model being rebuilt, as in the seed.
//! - **outbox** (`--emit-outbox`): the rows become outbox events for the running hosts, all in
//!   one transaction (all or none).
//! - **zero-downtime**: the rows go into a new model: shadow copies of the granted tables (sql
//!   projections, see `shadow`) or new indices behind the granted index names (search
//!   projections, see `index_swap`; the source must give each row the outbox `seq` it reflects).
//!   Then the events written after the snapshot that the hosts already applied to the old model
//!   are applied to the new one too (catch-up), and once caught up, with the projection paused
//!   for a moment, the new model is switched in atomically. Readers see the old model or the new
//!   one, never a part.
//!
//! Invariants:
//! - One rebuild per projection at a time (a session advisory lock); each is recorded in
//!   `projector_rebuilds` with its counts and outcome, which the hosts export as the
//!   `projector_rebuild_*` metrics.
//! - Nothing is changed before the source's first batch has been read and decoded: a source
//!   with a missing or mistyped column fails with the column named and the model untouched.
//! - A transient outcome retries the batch with backoff up to the projection's max attempts; a
//!   row that still fails counts in `rows_failed` and makes the rebuild fail. A failed
//!   zero-downtime rebuild never switches: the old model stays.

mod index_swap;
mod shadow;

use crate::settings::{ProjectionSpec, Settings};
use crate::{Error, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use projector_runtime::dispatch::dispatch;
use projector_runtime::{Handler, LoadedPlugin};
use projector_store::outbox::{Claim, ClaimedEvent, Verdict};
use projector_store::rebuilds;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use projector_store::rebuilds::Mode;

/// What to rebuild.
#[derive(Debug, Clone)]
pub struct Request {
    /// The projection.
    pub projection: String,
    /// How.
    pub mode: Mode,
    /// Empty the granted tables first (direct and outbox modes).
    pub truncate: bool,
    /// A source name from `[projection.sources]`, or SQL; `None` takes the only source.
    pub source: Option<String>,
    /// Who started it.
    pub by: String,
}

/// One source row the plugin answered with a failure.
#[derive(Debug, Clone, Serialize)]
pub struct RowFailure {
    /// The row's `id`.
    pub id: Uuid,
    /// The outcome's reason.
    pub reason: String,
    /// The outcome's message.
    pub message: String,
}

/// What a rebuild did (so far, while it runs).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `projector_rebuilds.id`.
    pub rebuild_id: i64,
    /// The projection.
    pub projection: String,
    /// The mode.
    pub mode: Mode,
    /// The source's name, or `sql` for SQL given on the command line.
    pub source: String,
    /// Source rows read.
    pub rows_read: u64,
    /// Rows applied (direct, zero-downtime) or emitted as outbox events (outbox).
    pub rows_applied: u64,
    /// Rows that failed.
    pub rows_failed: u64,
    /// Zero-downtime: events written after the snapshot, applied to the new model.
    pub caught_up: u64,
    /// Zero-downtime: unfinished events the new model already contained, marked done.
    pub superseded: u64,
    /// Zero-downtime: whether the new model was switched in.
    pub switched: bool,
    /// The first failures (at most 20).
    pub failures: Vec<RowFailure>,
    /// Wall time so far.
    pub duration_seconds: f64,
}

const MAX_LISTED_FAILURES: usize = 20;

/// Picks the source query: a name from `[projection.sources]`, literal SQL, or the only source.
pub fn resolve_source(spec: &ProjectionSpec, given: Option<&str>) -> Result<(String, String)> {
    let names = || {
        spec.sources
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match given.map(str::trim) {
        Some(name) if spec.sources.contains_key(name) => {
            Ok((name.to_owned(), spec.sources[name].clone()))
        }
        Some(sql) if looks_like_sql(sql) => Ok(("sql".to_owned(), sql.to_owned())),
        Some(other) => Err(Error::config(
            "--source",
            format!(
                "`{other}` is neither a source of projection `{}` ([projection.sources]: {}) nor a SELECT",
                spec.name,
                if spec.sources.is_empty() { "none".into() } else { names() }
            ),
        )),
        None if spec.sources.len() == 1 => {
            let (name, sql) = spec.sources.iter().next().expect("one source");
            Ok((name.clone(), sql.clone()))
        }
        None if spec.sources.is_empty() => Err(Error::config(
            "--source",
            format!(
                "projection `{}` has no [projection.sources]: name one there or pass the SQL",
                spec.name
            ),
        )),
        None => Err(Error::config(
            "--source",
            format!(
                "projection `{}` has several sources ({}): pick one",
                spec.name,
                names()
            ),
        )),
    }
}

fn looks_like_sql(s: &str) -> bool {
    let first = s
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(first.as_str(), "select" | "with" | "table" | "values")
}

/// Reads `name` from a source row: `Ok(None)` when the column is absent.
fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<Option<T>>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    match row.try_get::<T, _>(name) {
        Ok(v) => Ok(Some(v)),
        Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
        Err(e) => Err(Error::config(
            "--source",
            format!(
                "column `{name}`: {e} (expected {})",
                std::any::type_name::<T>()
            ),
        )),
    }
}

fn required<T>(value: Option<T>, name: &str, expected: &str) -> Result<T> {
    value.ok_or_else(|| {
        Error::config(
            "--source",
            format!(
                "the source has no `{name}` column ({expected}); see `projector rebuild --help`"
            ),
        )
    })
}

/// One source row as the event the plugin sees (`n` is its 1-based position).
fn source_event(row: &PgRow, n: i64, rebuild_id: i64) -> Result<ClaimedEvent> {
    let id = match column::<Uuid>(row, "id") {
        Ok(v) => required(v, "id", "uuid")?,
        Err(_) => {
            let text = required(column::<String>(row, "id")?, "id", "uuid")?;
            Uuid::parse_str(&text).map_err(|e| {
                Error::config(
                    "--source",
                    format!("column `id`: `{text}` is not a UUID: {e}"),
                )
            })?
        }
    };
    let payload = match column::<sqlx::types::Json<serde_json::Value>>(row, "payload") {
        Ok(v) => required(v, "payload", "jsonb")?.0.to_string(),
        Err(_) => {
            let text = required(column::<String>(row, "payload")?, "payload", "jsonb")?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                Error::config(
                    "--source",
                    format!("column `payload` of row {id} is not JSON: {e}"),
                )
            })?;
            text
        }
    };
    let occurred_at: DateTime<Utc> = column(row, "occurred_at")?.unwrap_or_else(Utc::now);
    Ok(ClaimedEvent {
        seq: column::<i64>(row, "seq")?.unwrap_or(n),
        id,
        event_type: required(column(row, "event_type")?, "event_type", "text")?,
        aggregate_type: column(row, "aggregate_type")?.unwrap_or_default(),
        aggregate_id: required(column(row, "aggregate_id")?, "aggregate_id", "text")?,
        payload,
        headers: vec![("projector-rebuild".to_owned(), rebuild_id.to_string())],
        occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        attempt: 1,
        reclaimed: false,
        too_large: None,
    })
}

/// Where the plugin's batches go and how they are retried.
struct Applier {
    spec: Arc<ProjectionSpec>,
    plugin: Arc<LoadedPlugin>,
    handler: Option<Handler>,
    /// For sql projections: the pool logged in as the projection's role.
    sql_pool: Option<PgPool>,
    /// The host's own pool (ends a stalled projection backend).
    supervisor: PgPool,
    /// Zero-downtime: the shadow schema put first on the plugin's search_path.
    shadow_schema: Option<String>,
}

impl Applier {
    /// Applies `events`; returns the verdict of each, retrying transient ones with backoff.
    async fn apply(&mut self, events: Vec<ClaimedEvent>) -> Result<Vec<Verdict>> {
        let tuning = self.spec.tuning.clone();
        let mut attempt = 1;
        loop {
            let claim = Claim {
                batch_id: Uuid::new_v4(),
                projection: self.spec.name.clone(),
                events: events
                    .iter()
                    .cloned()
                    .map(|mut e| {
                        e.attempt = attempt;
                        e
                    })
                    .collect(),
            };
            let verdicts = self.call(claim).await?;
            let transient = verdicts
                .iter()
                .any(|v| matches!(v, Verdict::Transient { .. }));
            if !transient || attempt >= tuning.max_attempts {
                return Ok(verdicts);
            }
            let delay = projector_store::outbox::backoff::retry_delay(
                attempt,
                tuning.base_backoff,
                tuning.max_backoff,
            );
            tracing::info!(projection = %self.spec.name, attempt, delay_ms = delay.as_millis() as u64,
                "rebuild batch had transient failures; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One call of the plugin over `claim`. A sql projection's batch is one transaction on its
    /// role, committed only when no event was transient (then the whole batch is retried).
    async fn call(&mut self, claim: Claim) -> Result<Vec<Verdict>> {
        let budget = self.spec.tuning.max_processing;
        let handler = self
            .handler
            .take()
            .unwrap_or_else(|| Handler::new(self.plugin.clone()));
        let tx = match &self.sql_pool {
            Some(pool) => {
                let mut tx = pool.begin().await?;
                if let Some(schema) = &self.shadow_schema {
                    projector_store::rebuilds::shadow::put_first_on_search_path(&mut tx, schema)
                        .await?;
                }
                Some(tx)
            }
            None => None,
        };
        let claim = Arc::new(claim);
        let dispatched = dispatch(
            handler,
            &claim,
            &self.spec.tuning,
            tx,
            budget,
            &self.supervisor,
        )
        .await;
        if let Some(e) = dispatched.panicked {
            return Err(anyhow::anyhow!("plugin handler panicked: {e}").into());
        }
        self.handler = dispatched.handler;
        let verdicts = dispatched.verdicts;
        if let Some(tx) = dispatched.tx {
            let tx = tx?;
            if verdicts
                .iter()
                .any(|v| matches!(v, Verdict::Transient { .. }))
            {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
        }
        Ok(verdicts)
    }
}

/// Counts `verdicts` of `events` into `report`: successes as applied source rows, or as
/// caught-up events (`catch_up`).
fn tally(report: &mut Report, events: &[ClaimedEvent], verdicts: &[Verdict], catch_up: bool) {
    for (e, v) in events.iter().zip(verdicts) {
        match v {
            Verdict::Success if catch_up => report.caught_up += 1,
            Verdict::Success => report.rows_applied += 1,
            // A rebuild calls the plugin on its own batches and never defers.
            Verdict::Deferred => {}
            Verdict::Transient { reason, message } | Verdict::Deterministic { reason, message } => {
                report.rows_failed += 1;
                if report.failures.len() < MAX_LISTED_FAILURES {
                    report.failures.push(RowFailure {
                        id: e.id,
                        reason: reason.clone(),
                        message: message.clone(),
                    });
                }
            }
        }
    }
}

/// The plugin version to rebuild with: the one the hosts run (the active one in
/// `plugin_versions`), else the configured file.
async fn load_plugin(
    settings: &Settings,
    pool: &PgPool,
    spec: &ProjectionSpec,
    redirect: std::collections::BTreeMap<String, String>,
) -> Result<Arc<LoadedPlugin>> {
    let runtime = projector_runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("starting the WebAssembly runtime: {e:#}"))?
        .with_search(settings.elastic.as_ref())?
        .with_cache(settings.plugin_cache_dir.as_deref())
        .with_index_redirect(redirect);
    let (bytes, origin) = match projector_store::versions::active(pool, &spec.name).await? {
        Some(active) => (
            active.component,
            std::path::PathBuf::from(format!("plugin_versions[{}]", spec.name)),
        ),
        None => (
            std::fs::read(&spec.plugin).map_err(|e| Error::Plugin {
                path: spec.plugin.clone(),
                message: format!("cannot read: {e}"),
            })?,
            spec.plugin.clone(),
        ),
    };
    let spec = spec.clone();
    let worker_id = settings.worker_id.clone();
    tokio::task::spawn_blocking(move || runtime.load_bytes(&spec, &worker_id, &bytes, &origin))
        .await
        .map_err(|e| anyhow::anyhow!("loading the plugin panicked: {e}"))?
}

fn counts(r: &Report) -> rebuilds::Counts {
    rebuilds::Counts {
        rows_read: r.rows_read,
        rows_applied: r.rows_applied,
        rows_failed: r.rows_failed,
        caught_up: r.caught_up,
    }
}

async fn record_progress(pool: &PgPool, r: &Report) -> sqlx::Result<()> {
    rebuilds::record_progress(pool, r.rebuild_id, &counts(r)).await
}

/// Runs a rebuild to the end. `progress` is called after every batch.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    request: Request,
    progress: &(dyn Fn(&Report) + Send + Sync),
) -> Result<Report> {
    let spec = settings
        .projections
        .iter()
        .find(|p| p.name == request.projection)
        .ok_or_else(|| {
            Error::config(
                "--projection",
                format!(
                    "`{}` is not a projection of this configuration",
                    request.projection
                ),
            )
        })?;
    let spec = Arc::new(spec.clone());
    let (source_name, source_sql) = resolve_source(&spec, request.source.as_deref())?;
    if request.mode == Mode::ZeroDowntime && spec.grants.sql() == spec.grants.search() {
        return Err(Error::config(
            "--zero-downtime",
            format!(
                "projection `{}` must be granted either sql tables or search indices (not {}): zero-downtime rebuilds switch the granted tables, or the granted indices",
                spec.name,
                if spec.grants.sql() { "both" } else { "neither" }
            ),
        ));
    }
    if request.truncate && request.mode != Mode::ZeroDowntime && !spec.grants.sql() {
        return Err(Error::config(
            "--truncate",
            format!(
                "projection `{}` has no granted tables to empty (only sql projections can be truncated)",
                spec.name
            ),
        ));
    }

    // One rebuild per projection: the lock lives as long as this connection.
    let mut lock = pool.acquire().await?;
    if !rebuilds::try_lock(&mut lock, &spec.name).await? {
        return Err(Error::config(
            "--projection",
            format!("a rebuild of `{}` is already running", spec.name),
        ));
    }
    let rebuild_id = rebuilds::start(
        pool,
        &rebuilds::NewRebuild {
            projection: &spec.name,
            mode: request.mode,
            source: &source_name,
            truncate: request.truncate,
            started_by: &request.by,
        },
    )
    .await?;
    let started = Instant::now();
    let mut report = Report {
        rebuild_id,
        projection: spec.name.clone(),
        mode: request.mode,
        source: source_name,
        rows_read: 0,
        rows_applied: 0,
        rows_failed: 0,
        caught_up: 0,
        superseded: 0,
        switched: false,
        failures: Vec::new(),
        duration_seconds: 0.0,
    };
    tracing::info!(projection = %spec.name, rebuild_id, mode = request.mode.as_str(), source = %report.source, "rebuild started");
    let outcome = execute(
        settings,
        pool,
        &spec,
        &request,
        &source_sql,
        &mut report,
        started,
        progress,
    )
    .await;
    report.duration_seconds = started.elapsed().as_secs_f64();
    let (ending, error) = match &outcome {
        Ok(()) if report.rows_failed == 0 => (rebuilds::Ending::Succeeded, None),
        Ok(()) => (
            rebuilds::Ending::Failed,
            Some(format!("{} source rows failed", report.rows_failed)),
        ),
        Err(e) => (rebuilds::Ending::Failed, Some(e.to_string())),
    };
    rebuilds::finish(pool, rebuild_id, ending, &counts(&report), error.as_deref()).await?;
    rebuilds::unlock(&mut lock, &spec.name).await?;
    let status = ending.as_str();
    tracing::info!(projection = %spec.name, rebuild_id, status, rows_read = report.rows_read,
        rows_applied = report.rows_applied, rows_failed = report.rows_failed,
        caught_up = report.caught_up, switched = report.switched, "rebuild finished");
    outcome?;
    match error {
        Some(e) => Err(Error::Other(anyhow::anyhow!(
            "rebuild of `{}` failed: {e}{}",
            spec.name,
            if request.mode == Mode::ZeroDowntime {
                " (the old model stays in place)"
            } else {
                ""
            }
        ))),
        None => Ok(report),
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    settings: &Settings,
    pool: &PgPool,
    spec: &Arc<ProjectionSpec>,
    request: &Request,
    source_sql: &str,
    report: &mut Report,
    started: Instant,
    progress: &(dyn Fn(&Report) + Send + Sync),
) -> Result<()> {
    let batch_size = spec.tuning.batch_size as usize;
    // The source, in one snapshot, as a role that may read only the projection's
    // `source_tables`, and only as a statement a plugin could send too.
    projector_runtime::sql_policy::check(source_sql)
        .map_err(|why| Error::config("--source", format!("the source query is refused: {why}")))?;
    let reader = projector_store::sql_roles::source_role(pool, spec).await?;
    let (mut source, snapshot) = rebuilds::open_source(pool, &reader).await?;
    let mut rows = rebuilds::source_rows(&mut source, source_sql);
    let mut first = Vec::with_capacity(batch_size);
    let search_swap = request.mode == Mode::ZeroDowntime && spec.grants.search();
    while first.len() < batch_size {
        match rows.try_next().await {
            Ok(Some(row)) => {
                if search_swap && first.is_empty() && column::<i64>(&row, "seq")?.is_none() {
                    return Err(Error::config(
                        "--source",
                        "a zero-downtime rebuild of a search projection needs a `seq` column: \
                         the seq of the latest outbox event each row reflects (documents carry \
                         it as their external version)",
                    ));
                }
                first.push(source_event(
                    &row,
                    first.len() as i64 + 1,
                    report.rebuild_id,
                )?)
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Error::config(
                    "--source",
                    format!("the source query failed: {e}"),
                ))
            }
        }
    }

    if request.mode == Mode::Outbox {
        let mut out = pool.begin().await?;
        if request.truncate {
            rebuilds::shadow::truncate(&mut out, &spec.grants.sql_tables).await?;
        }
        let mut batch = first;
        loop {
            report.rows_read += batch.len() as u64;
            report.rows_applied += rebuilds::emit(&mut out, &spec.name, &batch).await?;
            progress(report);
            batch = next_batch(
                &mut rows,
                batch_size,
                report.rows_read as i64,
                report.rebuild_id,
            )
            .await?;
            if batch.is_empty() {
                break;
            }
        }
        out.commit().await?;
        return Ok(());
    }

    // A search projection's new indices exist before its plugin is loaded: the plugin's writes
    // are redirected to them.
    let indices = if search_swap {
        let elastic = settings.elastic.as_ref().ok_or_else(|| {
            Error::config(
                crate::settings::table::elastic_url.env,
                "not set: the projection is granted `search`",
            )
        })?;
        let client = projector_runtime::search::SearchClient::new(elastic)?;
        Some(index_swap::IndexSwap::prepare(client, spec, report.rebuild_id).await?)
    } else {
        None
    };
    let redirect = indices.as_ref().map(|i| i.redirect()).unwrap_or_default();
    let plugin = load_plugin(settings, pool, spec, redirect).await?;
    let sql_pool = if spec.grants.sql() {
        let pools = projector_store::sql_roles::provision(
            pool,
            &settings.database_url,
            std::slice::from_ref(spec.as_ref()),
            |_| 2,
        )
        .await?;
        pools.into_iter().next().map(|(_, p)| p)
    } else {
        None
    };
    let model = if let Some(indices) = indices {
        Some(NewModel::Indices(indices))
    } else if request.mode == Mode::ZeroDowntime {
        Some(NewModel::Tables(
            rebuilds::shadow::Shadow::prepare(pool, spec).await?,
        ))
    } else {
        if request.truncate {
            let mut tx = pool.begin().await?;
            rebuilds::shadow::truncate(&mut tx, &spec.grants.sql_tables).await?;
            tx.commit().await?;
        }
        None
    };
    let mut applier = Applier {
        spec: spec.clone(),
        plugin,
        handler: None,
        sql_pool,
        supervisor: pool.clone(),
        shadow_schema: match &model {
            Some(NewModel::Tables(s)) => Some(s.schema.clone()),
            _ => None,
        },
    };
    let result: Result<()> = async {
        let mut batch = first;
        let mut last_progress = Instant::now();
        while !batch.is_empty() {
            report.rows_read += batch.len() as u64;
            let verdicts = applier.apply(batch.clone()).await?;
            tally(report, &batch, &verdicts, false);
            report.duration_seconds = started.elapsed().as_secs_f64();
            progress(report);
            if last_progress.elapsed() > Duration::from_secs(1) {
                record_progress(pool, report).await?;
                last_progress = Instant::now();
            }
            batch = next_batch(
                &mut rows,
                batch_size,
                report.rows_read as i64,
                report.rebuild_id,
            )
            .await?;
        }
        Ok(())
    }
    .await;
    drop(rows);
    source.rollback().await?;
    let Some(model) = model else {
        return result;
    };
    if result.is_err() || report.rows_failed > 0 {
        model.discard(pool).await?;
        return result;
    }
    let switched = model
        .catch_up_and_switch(pool, &spec.name, &mut applier, &snapshot, report, progress)
        .await;
    if switched.is_err() && !report.switched {
        model.discard(pool).await.ok();
    }
    switched
}

async fn next_batch<'a>(
    rows: &mut (impl futures_util::Stream<Item = sqlx::Result<PgRow>> + Unpin),
    batch_size: usize,
    read: i64,
    rebuild_id: i64,
) -> Result<Vec<ClaimedEvent>> {
    let mut batch = Vec::with_capacity(batch_size);
    while batch.len() < batch_size {
        match rows.try_next().await? {
            Some(row) => batch.push(source_event(
                &row,
                read + batch.len() as i64 + 1,
                rebuild_id,
            )?),
            None => break,
        }
    }
    Ok(batch)
}

/// Applies to the new model every event of `projection` done after `snapshot` and not applied
/// yet (`applied`, by seq); returns how many. A catch-up event that fails in the new model
/// fails the rebuild (the old model stays).
async fn catch_up(
    pool: &PgPool,
    projection: &str,
    applier: &mut Applier,
    snapshot: &str,
    applied: &mut Vec<i64>,
    report: &mut Report,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let events = projector_store::outbox::operator::done_after_snapshot(
            &mut *pool.acquire().await?,
            projection,
            snapshot,
            applied,
        )
        .await?;
        if events.is_empty() {
            return Ok(total);
        }
        for chunk in events.chunks(applier.spec.tuning.batch_size as usize) {
            let verdicts = applier.apply(chunk.to_vec()).await?;
            let before = report.rows_failed;
            tally(report, chunk, &verdicts, true);
            total += chunk.len() as u64;
            applied.extend(chunk.iter().map(|e| e.seq));
            if report.rows_failed > before {
                return Err(Error::Other(anyhow::anyhow!(
                    "catch-up event failed in the new model: {:?}",
                    report.failures.last()
                )));
            }
        }
    }
}

/// Waits until no event of `projection` is processing under a live lease (batches claimed
/// before the pause finish, or their lease runs out).
async fn wait_until_nothing_in_flight(
    pool: &PgPool,
    projection: &str,
    patience: Duration,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    while projector_store::outbox::operator::in_flight(&mut *pool.acquire().await?, projection)
        .await?
        > 0
    {
        if Instant::now() > deadline {
            return Err(Error::Other(anyhow::anyhow!(
                "events of `{projection}` stayed in flight for {patience:?} after the pause"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Removes the switch's pause (only its own: an operator's pause stays) and wakes the hosts.
async fn lift_pause(conn: &mut sqlx::PgConnection, projection: &str, pauser: &str) -> Result<()> {
    projector_store::outbox::operator::resume_in(conn, projection, Some(pauser)).await?;
    Ok(())
}

/// The last step of every switch, in its transaction: the unfinished events the new model
/// already contains (written in `snapshot`) are marked done, and the switch's pause is lifted.
async fn finish_switch(
    tx: &mut sqlx::PgConnection,
    projection: &str,
    snapshot: &str,
    pauser: &str,
    report: &mut Report,
) -> Result<()> {
    report.superseded = projector_store::outbox::operator::supersede_in_snapshot(
        &mut *tx, projection, snapshot, pauser,
    )
    .await?;
    lift_pause(tx, projection, pauser).await
}

/// The new model of a zero-downtime rebuild.
enum NewModel {
    /// Shadow tables (sql projections).
    Tables(rebuilds::shadow::Shadow),
    /// New indices behind the granted names (search projections).
    Indices(index_swap::IndexSwap),
}

impl NewModel {
    async fn discard(&self, pool: &PgPool) -> Result<()> {
        match self {
            NewModel::Tables(s) => s.discard(pool).await,
            NewModel::Indices(i) => i.discard().await,
        }
    }

    /// Catches up while the hosts keep applying, pauses the projection, and switches the new
    /// model in (each kind catches up the rest under the pause first).
    async fn catch_up_and_switch(
        &self,
        pool: &PgPool,
        projection: &str,
        applier: &mut Applier,
        snapshot: &str,
        report: &mut Report,
        progress: &(dyn Fn(&Report) + Send + Sync),
    ) -> Result<()> {
        let mut applied: Vec<i64> = Vec::new();
        // Rounds while the hosts keep applying: each round is shorter than the last.
        for _ in 0..10 {
            let n = catch_up(pool, projection, applier, snapshot, &mut applied, report).await?;
            progress(report);
            if n < 100 {
                break;
            }
        }
        let pauser = format!("rebuild#{}", report.rebuild_id);
        projector_store::outbox::operator::pause(
            pool,
            projection,
            &pauser,
            Some("zero-downtime rebuild: switching the model"),
        )
        .await?;
        let result = match self {
            NewModel::Tables(s) => {
                shadow::switch(s, pool, applier, snapshot, &mut applied, report, &pauser).await
            }
            NewModel::Indices(i) => {
                i.switch(pool, applier, snapshot, &mut applied, report, &pauser)
                    .await
            }
        };
        // The switch lifts the pause in its transaction; after a failure lift it here.
        if result.is_err() {
            lift_pause(&mut *pool.acquire().await?, projection, &pauser).await?;
        }
        progress(report);
        result
    }
}
