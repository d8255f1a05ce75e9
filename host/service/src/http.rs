//! The HTTP surface: `/healthz` (the process serves), `/readyz` (the database answers and every
//! plugin is loaded), `/metrics` (Prometheus text), the admin API (JSON; documented in
//! `docs/openapi.json`), and the operator console at `/ui` ([`crate::console`]), which uses
//! nothing but that API.
//!
//! Invariants:
//! - Reads of counts, versions and records are open: `GET /status`, `GET
//!   /projections/{name}/status`, `.../plugins`, `.../audit`, `.../rebuilds`, `.../history` (from
//!   memory, [`crate::history`]), and `/readyz`. Reads of event contents (`.../events`,
//!   `.../events/{event}`: payloads, headers and errors, which may hold personal data) need the
//!   token, like writes. Database reads run on a pool of their own ([`read_pool`]: at most
//!   [`READ_CONNECTIONS`] connections, each with `statement_timeout` [`READ_STATEMENT_TIMEOUT`]
//!   and read-only transactions), never on the claim loops' pool: readers cannot take the
//!   connections a claim needs (they still share the database server's CPU and I/O). A read that
//!   finds every read connection busy for [`READ_ACQUIRE_TIMEOUT`], or that runs past the
//!   statement timeout, is 503 with `Retry-After`.
//! - Every write (and every read of event contents) needs the bearer token `OUTBOX_ADMIN_TOKEN`,
//!   checked by a layer in front of those routes, before a byte of the body is read: without the right token the answer is 401
//!   (with no token configured, 403), the connection is closed, and nothing changes. The token is
//!   compared in constant time (SHA-256 digests, `subtle`). Writes: `PUT .../plugin` (body = the
//!   component; `?canary=P` starts a canary for P % of aggregates instead), `POST .../rollback`,
//!   `.../canary/promote`, `.../canary/abort`, `.../replay`, `.../skip`, `.../pause`,
//!   `.../resume`, `.../rebuild`. In front of the token check, a request a browser marks as
//!   cross-site is refused with 403 ([`crate::same_origin`]).
//! - Every answer carries the console's Content-Security-Policy, `nosniff` and
//!   `Referrer-Policy` ([`crate::console::security_headers`]).
//! - Bodies are bounded per route: [`MAX_COMPONENT_BYTES`] for a component, [`MAX_JSON_BYTES`]
//!   for every JSON write. A larger `Content-Length` is 413 before the body is read; a chunked
//!   body is 413 as soon as it passes the limit.
//! - At most [`MAX_CONCURRENT_UPLOADS`] authorized uploads (body read, validation, compilation)
//!   run at once; one more is 429 with `Retry-After`, before its body is read.
//! - Who acted is the `by` field of the body, else the `X-Projector-By` header, else `http`.
//! - The write endpoints call the same functions as the CLI commands; nothing here touches the
//!   outbox tables directly.

use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// What the handlers read.
pub struct AppState {
    /// Each projection's plugin versions, once started (admin API).
    pub versions: std::sync::OnceLock<Arc<crate::plugin_versions::ActiveVersions>>,
    /// The admin API's bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// The host's pool (the claim loops'): writes only.
    pub pool: PgPool,
    /// The open reads' pool ([`read_pool`]), separate from the claim loops'.
    pub read_pool: PgPool,
    /// Set once every plugin is loaded and the claim loops run.
    pub ready: AtomicBool,
    /// The host's settings (the rebuild endpoint runs a projection's plugin with them).
    pub settings: Option<Arc<crate::settings::Settings>>,
    /// The last minutes of each projection's lag and throughput (the console's chart).
    pub history: Arc<crate::history::History>,
}

/// Connections of the open reads' pool.
pub const READ_CONNECTIONS: u32 = 2;
/// How long an open read waits for a connection of its pool before it is 503.
pub const READ_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// `statement_timeout` of the open reads' connections.
pub const READ_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `application_name` of the open reads' connections.
pub const READ_APPLICATION_NAME: &str = "projector-http-reads";

/// The open reads' pool: [`READ_CONNECTIONS`] connections at most, opened on demand, each with
/// `statement_timeout` [`READ_STATEMENT_TIMEOUT`] and read-only transactions by default.
pub fn read_pool(url: &str) -> crate::Result<PgPool> {
    let timeout_ms = READ_STATEMENT_TIMEOUT.as_millis().to_string();
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| crate::Error::Connect(format!("not a valid postgres URL: {e}")))?
        .application_name(READ_APPLICATION_NAME)
        .options([
            ("statement_timeout", timeout_ms.as_str()),
            ("default_transaction_read_only", "on"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(READ_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// The router: probes, metrics, the open reads and the token-guarded writes.
pub fn router(state: Arc<AppState>) -> Router {
    let uploads = Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS));
    let token = middleware::from_fn_with_state(state.clone(), require_token);
    // Layers run outside in: the token, then the length, then the upload slot, then the body.
    let upload = Router::new()
        .route(
            "/projections/{name}/plugin",
            put(load_plugin)
                .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
                .layer(middleware::from_fn_with_state(uploads, upload_slot))
                .layer(middleware::from_fn(|req: Request, next: Next| {
                    within_limit(MAX_COMPONENT_BYTES, req, next)
                })),
        )
        .route_layer(token.clone())
        .route_layer(middleware::from_fn(crate::same_origin::refuse_cross_site));
    let event_reads = Router::new()
        .route("/projections/{name}/events", get(list_events))
        .route("/projections/{name}/events/{event}", get(event_detail))
        .route_layer(token.clone())
        .route_layer(middleware::from_fn(crate::same_origin::refuse_cross_site));
    let json_writes = Router::new()
        .route("/projections/{name}/rollback", post(rollback))
        .route("/projections/{name}/canary/promote", post(promote_canary))
        .route("/projections/{name}/canary/abort", post(abort_canary))
        .route("/projections/{name}/replay", post(replay))
        .route("/projections/{name}/skip", post(skip))
        .route("/projections/{name}/pause", post(pause))
        .route("/projections/{name}/resume", post(resume))
        .route("/projections/{name}/rebuild", post(rebuild))
        .route_layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .route_layer(middleware::from_fn(|req: Request, next: Next| {
            within_limit(MAX_JSON_BYTES, req, next)
        }))
        .route_layer(token)
        .route_layer(middleware::from_fn(crate::same_origin::refuse_cross_site));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/projections/{name}/plugins", get(list_plugins))
        .route("/status", get(status_all))
        .route("/projections/{name}/status", get(status_one))
        .route("/projections/{name}/audit", get(audit))
        .route("/projections/{name}/rebuilds", get(rebuilds))
        .route("/projections/{name}/history", get(history))
        .merge(upload)
        .merge(event_reads)
        .merge(json_writes)
        .merge(crate::console::router())
        .with_state(state)
        .layer(middleware::from_fn(crate::console::security_headers))
}

/// The largest component the admin API accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// The largest JSON body a write accepts.
pub const MAX_JSON_BYTES: usize = 64 << 10;
/// How many authorized plugin uploads run at once.
pub const MAX_CONCURRENT_UPLOADS: usize = 2;
/// `Retry-After` (seconds) of a 429 or 503.
const RETRY_AFTER_SECONDS: &str = "2";

type Reply = Response;

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    (status, Json(body)).into_response()
}

/// A 429/503 telling the client when to come back.
fn busy(status: StatusCode, error: String) -> Reply {
    let mut r = reply(status, json!({ "error": error }));
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    r
}

/// An answer after which the connection is closed, so a body the client is still sending is
/// never read.
fn closing(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether `given` is the token, in time independent of where they differ and of the
/// token's length (both sides are hashed first).
fn token_matches(token: &str, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .ct_eq(&Sha256::digest(given.as_bytes()))
        .into()
}

/// The layer in front of every write: 403 when no token is configured, 401 unless the request
/// carries `Authorization: Bearer <token>`; the body is not read either way.
async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Reply {
    let Some(token) = &state.admin_token else {
        return closing(reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the admin API is disabled: set OUTBOX_ADMIN_TOKEN"}),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|given| token_matches(token, given)) {
        return closing(reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}),
        ));
    }
    next.run(req).await
}

fn too_large(limit: usize) -> Reply {
    closing(reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"error": format!("the body is larger than this route's limit of {limit} bytes")}),
    ))
}

/// 413 before the body is read when its `Content-Length` exceeds `limit` (a chunked body is
/// cut at `limit` by `DefaultBodyLimit` while it is read).
async fn within_limit(limit: usize, req: Request, next: Next) -> Reply {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    next.run(req).await
}

/// Takes one of the [`MAX_CONCURRENT_UPLOADS`] slots for the whole upload, or answers 429.
async fn upload_slot(State(uploads): State<Arc<Semaphore>>, req: Request, next: Next) -> Reply {
    let Ok(_permit) = uploads.try_acquire_owned() else {
        return closing(busy(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_CONCURRENT_UPLOADS} plugin uploads are already in progress; retry later"),
        ));
    };
    next.run(req).await
}

/// The body, or 413 naming `limit` when it was cut there (400 for any other read failure).
fn body_within(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, Reply> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            closing(reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read the body: {}", rejection.body_text())}),
            ))
        }
    })
}

/// Who is acting when the body names no one: `X-Projector-By`, default `http`.
fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-projector-by")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("http")
        .to_owned()
}

/// The answer to an open read that failed: 503 with `Retry-After` when the read pool was busy
/// or the statement timeout cancelled it, 500 otherwise.
fn read_failed(e: sqlx::Error) -> Reply {
    match &e {
        sqlx::Error::PoolTimedOut => busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "every read connection ({READ_CONNECTIONS}) stayed busy for {}s; retry later",
                READ_ACQUIRE_TIMEOUT.as_secs()
            ),
        ),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the read ran past the read statement timeout ({}s) and was cancelled",
                READ_STATEMENT_TIMEOUT.as_secs()
            ),
        ),
        _ => internal(e),
    }
}

/// Each projection's plugin versions, once the host has started.
fn versions(state: &AppState) -> Result<Arc<crate::plugin_versions::ActiveVersions>, Reply> {
    state.versions.get().cloned().ok_or_else(|| {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "starting"}),
        )
    })
}

/// Parses the JSON body (an empty body is `{}`); the token was checked by [`require_token`].
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Reply> {
    let body = body_within(body, MAX_JSON_BYTES)?;
    let raw: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(raw).map_err(|e| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid JSON body: {e}")}),
        )
    })
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

fn activated(name: &str, result: crate::Result<Arc<projector_runtime::LoadedPlugin>>) -> Reply {
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

/// The answer to a canary request: the version it concerns, or why not (404 for a projection
/// this host does not run, 409 when the canary state does not allow it, 422 for a bad
/// component).
fn canary_reply(
    name: &str,
    status: &str,
    result: crate::Result<Arc<projector_runtime::LoadedPlugin>>,
) -> Reply {
    match result {
        Ok(p) => reply(
            StatusCode::OK,
            json!({"projection": name, "status": status, "version": p.version_label, "digest": p.digest}),
        ),
        Err(crate::Error::Config { key, message }) if key == "projection" => {
            reply(StatusCode::NOT_FOUND, json!({"error": message}))
        }
        Err(e @ crate::Error::Config { .. }) => {
            reply(StatusCode::CONFLICT, json!({"error": e.to_string()}))
        }
        other => activated(name, other),
    }
}

/// `?canary=P` (or `P%`) of a plugin upload: the canary's share in percent, 1 to 99.
fn canary_share(uri: &axum::http::Uri) -> Result<Option<u8>, Reply> {
    let Some(raw) = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("canary="))
    else {
        return Ok(None);
    };
    let text = raw.trim_end_matches("%25").trim_end_matches('%');
    match text.parse::<u8>() {
        Ok(p) if (1..=99).contains(&p) => Ok(Some(p)),
        _ => Err(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("canary: `{raw}` is not a share between 1 and 99 percent")}),
        )),
    }
}

async fn load_plugin(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let share = match canary_share(&uri) {
        Ok(share) => share,
        Err(r) => return r,
    };
    let (body, versions) =
        match body_within(body, MAX_COMPONENT_BYTES).and_then(|b| Ok((b, versions(&state)?))) {
            Ok(ok) => ok,
            Err(r) => return r,
        };
    match share {
        None => activated(
            &name,
            versions
                .activate(&name, body.to_vec(), &actor(&headers), "upload")
                .await,
        ),
        Some(share) => canary_reply(
            &name,
            "canary",
            versions
                .start_canary(&name, body.to_vec(), share, &actor(&headers))
                .await,
        ),
    }
}

async fn promote_canary(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    match versions(&state) {
        Ok(v) => canary_reply(&name, "active", v.promote(&name, &actor(&headers)).await),
        Err(r) => r,
    }
}

async fn abort_canary(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    match versions(&state) {
        Ok(v) => canary_reply(&name, "active", v.abort(&name, &actor(&headers)).await),
        Err(r) => r,
    }
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let versions = match versions(&state) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let by = actor(&headers);
    // The console asks why; the versions table has no column for it, so the log keeps it.
    if let Some(reason) = headers
        .get("x-projector-reason")
        .and_then(|v| v.to_str().ok())
    {
        tracing::info!(projection = %name, by = %by, reason, "plugin rollback requested");
    }
    activated(&name, versions.rollback(&name, &by).await)
}

async fn list_plugins(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    let listed = match projector_store::versions::list(&state.read_pool, &name).await {
        Ok(rows) => rows,
        Err(e) => return read_failed(e),
    };
    match projector_store::versions::canaries(&state.read_pool, Some(&name)).await {
        Ok(canaries) => reply(
            StatusCode::OK,
            json!({"projection": name, "versions": listed, "canaries": canaries}),
        ),
        Err(e) => read_failed(e),
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
        projector_store::db::ping(&state.read_pool),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        Ok(Err(sqlx::Error::PoolTimedOut)) => (StatusCode::SERVICE_UNAVAILABLE, "read pool busy"),
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
    match projector_store::outbox::status::status(&state.read_pool, None).await {
        Ok(rows) => reply(StatusCode::OK, json!({"projections": rows})),
        Err(e) => read_failed(e),
    }
}

async fn status_one(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    match projector_store::outbox::status::status(&state.read_pool, Some(&name)).await {
        Ok(mut rows) => reply(StatusCode::OK, json!(rows.pop())),
        Err(e) => read_failed(e),
    }
}

async fn audit(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    match projector_store::outbox::operator::audit_trail(&state.read_pool, &name).await {
        Ok(rows) => reply(StatusCode::OK, json!({"projection": name, "audit": rows})),
        Err(e) => read_failed(e),
    }
}

async fn rebuilds(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    match projector_store::rebuilds::recent(&state.read_pool, &name).await {
        Ok(rows) => reply(
            StatusCode::OK,
            json!({"projection": name, "rebuilds": rows}),
        ),
        Err(e) => read_failed(e),
    }
}

async fn history(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Reply {
    match state.history.samples(&name) {
        Some(samples) => reply(
            StatusCode::OK,
            json!({"projection": name, "window_seconds": crate::history::WINDOW.as_secs(),
                   "samples": samples}),
        ),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("`{name}` is not a projection of this host")}),
        ),
    }
}

/// The query of `GET .../events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    status: Option<String>,
    reason: Option<String>,
    event_type: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// Events listed when the query names no `limit`.
const DEFAULT_EVENTS_PAGE: i64 = 100;

async fn list_events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Reply {
    use projector_store::outbox::events;
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.body_text()})),
    };
    let status = q.status.unwrap_or_else(|| "failed".to_owned());
    if let Err(e) = events::check_status(&status) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("status: {e}")}),
        );
    }
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=events::MAX_PAGE).contains(&limit) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("limit: `{limit}` is not between 1 and {}", events::MAX_PAGE)}),
        );
    }
    let query = events::Query {
        status,
        error_reason: q.reason,
        event_type: q.event_type,
        after_seq: q.after.unwrap_or(0),
        limit,
    };
    match events::list(&state.read_pool, &name, &query).await {
        Ok(rows) => {
            let next = (rows.len() as i64 == limit)
                .then(|| rows.last().map(|r| r.seq))
                .flatten();
            reply(
                StatusCode::OK,
                json!({"projection": name, "status": query.status, "events": rows, "next_after": next}),
            )
        }
        Err(e) => read_failed(e),
    }
}

async fn event_detail(
    State(state): State<Arc<AppState>>,
    Path((name, event)): Path<(String, String)>,
) -> Reply {
    use projector_store::outbox::events;
    let key = match event.parse::<events::EventKey>() {
        Ok(key) => key,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e})),
    };
    match events::detail(&state.read_pool, &name, key).await {
        Ok(Some(detail)) => reply(StatusCode::OK, json!(detail)),
        Ok(None) => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("projection `{name}` has no event `{event}`")}),
        ),
        Err(e) => read_failed(e),
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
    body: Result<Bytes, BytesRejection>,
    skip: bool,
) -> Reply {
    let b = match parse_body::<ReplayBody>(body).and_then(|ok| known(state, name).map(|()| ok)) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let by =
        b.by.filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| actor(headers));
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
    let filter = projector_store::outbox::operator::Filter {
        error_reason: b.error_reason,
        event_type: b.event_type,
        ids: b.ids,
        limit: b.limit.map(i64::from),
    };
    match projector_store::outbox::operator::act(
        &state.pool,
        name,
        &filter,
        &by,
        &reason,
        b.dry_run,
        skip,
    )
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
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    replay_or_skip(&state, &name, &headers, body, false).await
}

async fn skip(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    replay_or_skip(&state, &name, &headers, body, true).await
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
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let b = match parse_body::<PauseBody>(body).and_then(|ok| known(&state, &name).map(|()| ok)) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let by =
        b.by.filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| actor(&headers));
    match projector_store::outbox::operator::pause(&state.pool, &name, &by, b.reason.as_deref())
        .await
    {
        Ok(()) => reply(StatusCode::OK, json!({"projection": name, "paused": true})),
        Err(e) => internal(e),
    }
}

async fn resume(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let b = match parse_body::<PauseBody>(body).and_then(|ok| known(&state, &name).map(|()| ok)) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    match projector_store::outbox::operator::resume(&state.pool, &name).await {
        Ok(was) => {
            // A pause is a row that goes away on resume: the log keeps who resumed and why.
            let by =
                b.by.filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| actor(&headers));
            tracing::info!(projection = %name, by = %by, reason = b.reason.as_deref().unwrap_or(""),
                was_paused = was, "projection resumed");
            reply(
                StatusCode::OK,
                json!({"projection": name, "paused": false, "was_paused": was}),
            )
        }
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
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    use crate::rebuild::{Mode, Request};
    let b = match parse_body::<RebuildBody>(body) {
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
        by: b
            .by
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| actor(&headers)),
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
    fn only_the_whole_token_matches() {
        let token = "test-admin-token-0123456789";
        assert!(super::token_matches(token, token));
        for wrong in [
            "",
            "t",
            "test-admin-token-012345678",
            "test-admin-token-01234567890",
            "test-admin-token-012345678X",
            "Xest-admin-token-0123456789",
        ] {
            assert!(!super::token_matches(token, wrong), "{wrong:?}");
        }
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/openapi.json")).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served = routes_in_source();
        assert!(served.len() >= 15, "parsed the router: {served:?}");
        assert_eq!(served, documented);
        // Every write, and every read of event contents, is documented as needing the token.
        for (method, path) in &served {
            let op = &doc["paths"][path][method.to_lowercase()];
            let secured = op.get("security").is_some();
            let guarded = method != "GET" || path.contains("/events");
            assert_eq!(secured, guarded, "{method} {path}");
        }
    }
}
