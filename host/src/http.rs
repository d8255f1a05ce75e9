//! The HTTP surface: `/healthz` (the process serves), `/readyz` (the database answers and every
//! plugin is loaded), `/metrics` (Prometheus text), and the admin API (JSON; documented in
//! `docs/openapi.yaml`).
//!
//! Invariants:
//! - Reads are open: `GET /status`, `GET /projections/{name}/status`, `.../plugins`, `.../audit`,
//!   `.../rebuilds`.
//! - Every write needs the bearer token `OUTBOX_ADMIN_TOKEN` and is checked before the body is
//!   even parsed: without the right token the answer is 401 and nothing changes; with no token
//!   configured every write is 403. Writes: `PUT .../plugin` (body = the component),
//!   `POST .../rollback`, `.../replay`, `.../skip`, `.../pause`, `.../resume`, `.../rebuild`.
//! - Who acted is the `by` field of the body, else the `X-Projector-By` header, else `http`.
//! - The write endpoints call the same functions as the CLI commands; nothing here touches the
//!   outbox tables directly.

use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the handlers read.
pub struct AppState {
    /// The plugin registry, once started (admin API).
    pub registry: std::sync::OnceLock<Arc<crate::registry::Registry>>,
    /// The admin API's bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// For the readiness probe.
    pub pool: PgPool,
    /// Set once every plugin is loaded and the claim loops run.
    pub ready: AtomicBool,
    /// The host's settings (the rebuild endpoint runs a projection's plugin with them).
    pub settings: Option<Arc<crate::settings::Settings>>,
}

/// The router with all three endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/projections/{name}/plugin",
            put(load_plugin).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route("/projections/{name}/rollback", post(rollback))
        .route("/projections/{name}/plugins", get(list_plugins))
        .route("/status", get(status_all))
        .route("/projections/{name}/status", get(status_one))
        .route("/projections/{name}/audit", get(audit))
        .route("/projections/{name}/rebuilds", get(rebuilds))
        .route("/projections/{name}/replay", post(replay))
        .route("/projections/{name}/skip", post(skip))
        .route("/projections/{name}/pause", post(pause))
        .route("/projections/{name}/resume", post(resume))
        .route("/projections/{name}/rebuild", post(rebuild))
        .with_state(state)
}

/// The largest component the admin API accepts.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

type Reply = (StatusCode, Json<serde_json::Value>);

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    (status, Json(body))
}

/// Checks the bearer token; returns who is acting (`X-Projector-By`, default `http`).
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, Reply> {
    let Some(token) = &state.admin_token else {
        return Err(reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the admin API is disabled: set OUTBOX_ADMIN_TOKEN"}),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token.as_str()) {
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}),
        ));
    }
    Ok(headers
        .get("x-projector-by")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("http")
        .to_owned())
}

/// The plugin registry, once the host has started.
fn registry(state: &AppState) -> Result<Arc<crate::registry::Registry>, Reply> {
    state.registry.get().cloned().ok_or_else(|| {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "starting"}),
        )
    })
}

/// Authorizes, then parses the JSON body (an empty body is `{}`).
fn authorized_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, T), Reply> {
    let by = authorize(state, headers)?;
    let raw: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let parsed = serde_json::from_slice(raw).map_err(|e| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid JSON body: {e}")}),
        )
    })?;
    Ok((by, parsed))
}

/// 404 unless `name` is a projection this host runs (writes never create rows for names that
/// are not configured, such as `../x`).
fn known(state: &AppState, name: &str) -> Result<(), Reply> {
    match &state.settings {
        Some(s) if s.projections.iter().any(|p| p.name == name) => Ok(()),
        _ => Err(reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("`{name}` is not a projection of this host")}),
        )),
    }
}

fn internal(e: impl std::fmt::Display) -> Reply {
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": e.to_string()}),
    )
}

fn missing(field: &str) -> Reply {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"error": format!("`{field}` is required and must not be empty")}),
    )
}

fn activated(name: &str, result: crate::Result<Arc<crate::plugin::LoadedPlugin>>) -> Reply {
    match result {
        Ok(p) => reply(
            StatusCode::OK,
            json!({"projection": name, "status": "active", "version": p.version_label, "digest": p.digest,
                   "compiled": p.compiled.as_str(), "load_ms": p.load_time.as_secs_f64() * 1000.0}),
        ),
        Err(e @ crate::Error::Plugin { .. }) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"projection": name, "status": "rejected", "error": e.to_string()}),
        ),
        Err(e @ crate::Error::Config { .. }) => {
            reply(StatusCode::NOT_FOUND, json!({"error": e.to_string()}))
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn load_plugin(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (by, registry) =
        match authorize(&state, &headers).and_then(|by| Ok((by, registry(&state)?))) {
            Ok(ok) => ok,
            Err(r) => return r,
        };
    activated(&name, registry.activate(&name, body.to_vec(), &by).await)
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let (by, registry) =
        match authorize(&state, &headers).and_then(|by| Ok((by, registry(&state)?))) {
            Ok(ok) => ok,
            Err(r) => return r,
        };
    activated(&name, registry.rollback(&name, &by).await)
}

async fn list_plugins(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    let registry = match registry(&state) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    match registry.list(&name).await {
        Ok(rows) => reply(
            StatusCode::OK,
            json!({"projection": name, "versions": rows}),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

/// A router with `/metrics` only, for a separate metrics port.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn status_all(State(state): State<Arc<AppState>>) -> Reply {
    match crate::outbox::status::status(&state.pool, None).await {
        Ok(rows) => reply(StatusCode::OK, json!({"projections": rows})),
        Err(e) => internal(e),
    }
}

async fn status_one(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    match crate::outbox::status::status(&state.pool, Some(&name)).await {
        Ok(mut rows) => reply(StatusCode::OK, json!(rows.pop())),
        Err(e) => internal(e),
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct AuditRow {
    id: i64,
    action: String,
    performed_by: String,
    performed_at: chrono::DateTime<chrono::Utc>,
    reason: String,
    filter: serde_json::Value,
    dry_run: bool,
    row_count: i32,
    event_ids: Vec<uuid::Uuid>,
}

async fn audit(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    let rows: sqlx::Result<Vec<AuditRow>> = sqlx::query_as(
        "SELECT id, action, performed_by, performed_at, reason, filter, dry_run, row_count, event_ids
         FROM replay_audit WHERE projection = $1 ORDER BY id DESC LIMIT 100",
    )
    .bind(&name)
    .fetch_all(&state.pool)
    .await;
    match rows {
        Ok(rows) => reply(StatusCode::OK, json!({"projection": name, "audit": rows})),
        Err(e) => internal(e),
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct RebuildRow {
    id: i64,
    mode: String,
    source: String,
    truncate: bool,
    started_by: String,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    status: String,
    rows_read: i64,
    rows_applied: i64,
    rows_failed: i64,
    caught_up: i64,
    error: Option<String>,
}

async fn rebuilds(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    let rows: sqlx::Result<Vec<RebuildRow>> = sqlx::query_as(
        "SELECT id, mode, source, truncate, started_by, started_at, finished_at, status, rows_read,
                rows_applied, rows_failed, caught_up, error
         FROM projector_rebuilds WHERE projection = $1 ORDER BY id DESC LIMIT 20",
    )
    .bind(&name)
    .fetch_all(&state.pool)
    .await;
    match rows {
        Ok(rows) => reply(
            StatusCode::OK,
            json!({"projection": name, "rebuilds": rows}),
        ),
        Err(e) => internal(e),
    }
}

/// The body of `POST .../replay` (and, with `ids` only, `.../skip`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    by: Option<String>,
    reason: Option<String>,
    error_reason: Option<String>,
    event_type: Option<String>,
    ids: Option<Vec<uuid::Uuid>>,
    limit: Option<u32>,
    #[serde(default)]
    dry_run: bool,
}

async fn replay_or_skip(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    skip: bool,
) -> Reply {
    let (by, b) = match authorized_body::<ReplayBody>(state, headers, body)
        .and_then(|ok| known(state, name).map(|()| ok))
    {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let by = b.by.filter(|v| !v.trim().is_empty()).unwrap_or(by);
    let Some(reason) = b.reason.filter(|v| !v.trim().is_empty()) else {
        return missing("reason");
    };
    if skip && b.ids.as_ref().is_none_or(|ids| ids.is_empty()) {
        return missing("ids");
    }
    if skip
        && (b.error_reason.is_some() || b.event_type.is_some() || b.limit.is_some() || b.dry_run)
    {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "skip takes `ids`, `reason` and `by` only"}),
        );
    }
    let filter = crate::outbox::operator::Filter {
        error_reason: b.error_reason,
        event_type: b.event_type,
        ids: b.ids,
        limit: b.limit.map(i64::from),
    };
    match crate::outbox::operator::act(&state.pool, name, &filter, &by, &reason, b.dry_run, skip)
        .await
    {
        Ok(outcome) => reply(StatusCode::OK, json!(outcome)),
        Err(e) => internal(e),
    }
}

async fn replay(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    replay_or_skip(&state, &name, &headers, &body, false).await
}

async fn skip(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    replay_or_skip(&state, &name, &headers, &body, true).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    by: Option<String>,
    reason: Option<String>,
}

async fn pause(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (by, b) = match authorized_body::<PauseBody>(&state, &headers, &body)
        .and_then(|ok| known(&state, &name).map(|()| ok))
    {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let by = b.by.filter(|v| !v.trim().is_empty()).unwrap_or(by);
    match crate::outbox::operator::pause(&state.pool, &name, &by, b.reason.as_deref()).await {
        Ok(()) => reply(StatusCode::OK, json!({"projection": name, "paused": true})),
        Err(e) => internal(e),
    }
}

async fn resume(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    if let Err(r) =
        authorized_body::<PauseBody>(&state, &headers, &body).and_then(|_| known(&state, &name))
    {
        return r;
    }
    match crate::outbox::operator::resume(&state.pool, &name).await {
        Ok(was) => reply(
            StatusCode::OK,
            json!({"projection": name, "paused": false, "was_paused": was}),
        ),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RebuildBody {
    by: Option<String>,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    emit_outbox: bool,
    #[serde(default)]
    zero_downtime: bool,
    source: Option<String>,
}

/// Starts a rebuild in the background: 202 once it is validated; progress and outcome are at
/// `GET .../rebuilds` and in the `projector_rebuild_*` metrics.
async fn rebuild(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    use crate::rebuild::{Mode, Request};
    let (by, b) = match authorized_body::<RebuildBody>(&state, &headers, &body) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let Some(settings) = state.settings.clone() else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "starting"}),
        );
    };
    let Some(spec) = settings.projections.iter().find(|p| p.name == name) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("`{name}` is not a projection of this host")}),
        );
    };
    if b.zero_downtime && (b.truncate || b.emit_outbox) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "`zero_downtime` excludes `truncate` and `emit_outbox`"}),
        );
    }
    if let Err(e) = crate::rebuild::resolve_source(spec, b.source.as_deref()) {
        return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
    }
    let request = Request {
        projection: name.clone(),
        mode: if b.zero_downtime {
            Mode::ZeroDowntime
        } else if b.emit_outbox {
            Mode::Outbox
        } else {
            Mode::Direct
        },
        truncate: b.truncate,
        source: b.source,
        by: b.by.filter(|v| !v.trim().is_empty()).unwrap_or(by),
    };
    let pool = state.pool.clone();
    // On a thread of its own: the rebuild's future holds a source cursor across awaits, which
    // the compiler cannot prove `Send` for a spawned task (rust-lang/rust#102211).
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        rt.block_on(async move {
            if let Err(e) = crate::rebuild::run(&settings, &pool, request, &|_| {}).await {
                tracing::warn!(error = %e, "rebuild failed");
            }
        })
    });
    reply(
        StatusCode::ACCEPTED,
        json!({"projection": name, "status": "started", "progress": format!("/projections/{name}/rebuilds")}),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(METHOD, path)` of every `.route(...)` in this file.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let source = include_str!("http.rs");
        let mut routes = BTreeSet::new();
        for chunk in source
            .split(".route(\n")
            .chain(source.split(".route("))
            .skip(1)
        {
            let Some(path) = chunk
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let rest = &chunk[chunk.find(path).unwrap() + path.len() + 1..];
            let method = rest
                .trim_start_matches([',', ' ', '\n'])
                .split('(')
                .next()
                .unwrap_or("")
                .to_uppercase();
            if path.starts_with('/') && ["GET", "PUT", "POST"].contains(&method.as_str()) {
                routes.insert((method, path.to_owned()));
            }
        }
        routes
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/openapi.json")).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served = routes_in_source();
        assert!(served.len() >= 15, "parsed the router: {served:?}");
        assert_eq!(served, documented);
        // Every write is documented as needing the token.
        for (method, path) in &served {
            let op = &doc["paths"][path][method.to_lowercase()];
            let secured = op.get("security").is_some();
            assert_eq!(secured, method != "GET", "{method} {path}");
        }
    }
}
