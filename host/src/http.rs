//! The HTTP surface: `/healthz` (the process serves), `/readyz` (the database answers and every
//! plugin is loaded), `/metrics` (Prometheus text), and the admin API (bearer token
//! `OUTBOX_ADMIN_TOKEN`; disabled without one): `PUT /projections/{name}/plugin` (body = the
//! component) activates a new version, `POST /projections/{name}/rollback` re-activates the
//! previous one, `GET /projections/{name}/plugins` lists the versions.

use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
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
        .with_state(state)
}

/// The largest component the admin API accepts.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

type Reply = (StatusCode, Json<serde_json::Value>);

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    (status, Json(body))
}

/// Checks the bearer token; returns who is acting (`X-Projector-By`, default `http`).
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Arc<crate::registry::Registry>), Reply> {
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
    let Some(registry) = state.registry.get() else {
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "starting"}),
        ));
    };
    let by = headers
        .get("x-projector-by")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("http")
        .to_owned();
    Ok((by, registry.clone()))
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
    let (by, registry) = match authorize(&state, &headers) {
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
    let (by, registry) = match authorize(&state, &headers) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    activated(&name, registry.rollback(&name, &by).await)
}

async fn list_plugins(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let (_, registry) = match authorize(&state, &headers) {
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
