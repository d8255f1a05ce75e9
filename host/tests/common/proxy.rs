//! A fault-injecting HTTP proxy in front of the real search server, for the throttling drills:
//! everything is forwarded to `osmem-server` unchanged except `_bulk` requests, which it can
//! throttle whole (429, nothing forwarded) or in part (some items held back and answered 429 in
//! the response; the others really applied by the server).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// What the proxy does to `_bulk` requests.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The first `n` bulk requests are answered 429 whole.
    ThrottleRequests(usize),
    /// An item whose document id `throttle(id)` picks is answered 429 the first time its
    /// (id, version) is seen, and not forwarded; every other item goes through.
    ThrottleItems(fn(&str) -> bool),
}

struct Shared {
    upstream: String,
    fault: Fault,
    agent: ureq::Agent,
    seen: Mutex<HashSet<(String, Option<i64>)>>,
    throttled_requests: AtomicUsize,
    throttled_items: Mutex<Vec<String>>,
}

/// The running proxy (stopped on drop).
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for `ELASTIC_URL`.
    pub url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (a base URL) injecting `fault`.
    pub fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            fault,
            agent: ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .build()
                .into(),
            seen: Mutex::new(HashSet::new()),
            throttled_requests: AtomicUsize::new(0),
            throttled_items: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        FaultProxy {
            url,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// How many bulk requests were answered 429 whole.
    pub fn throttled_requests(&self) -> usize {
        self.shared.throttled_requests.load(Ordering::SeqCst)
    }

    /// The document ids of the items answered 429, in order.
    pub fn throttled_items(&self) -> Vec<String> {
        self.shared.throttled_items.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one request upstream (blocking).
fn send(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut request = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(format!("{}{path}", shared.upstream));
    for name in ["content-type", "authorization"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.as_bytes());
        }
    }
    let mut response = shared
        .agent
        .run(request.body(body).unwrap())
        .expect("the search server answers the proxy");
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap_or_default();
    (status, bytes)
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let bulk = uri.path().ends_with("/_bulk");
    tokio::task::spawn_blocking(move || {
        if bulk {
            if let Fault::ThrottleRequests(n) = shared.fault {
                let done = shared.throttled_requests.fetch_add(1, Ordering::SeqCst);
                if done < n {
                    let body = json!({"error": {"type": "es_rejected_execution_exception",
                        "reason": "rejected execution (injected by the test proxy)"}, "status": 429});
                    return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                }
            }
            if let Fault::ThrottleItems(pick) = shared.fault {
                return partial_bulk(&shared, pick, &method, &path, &headers, &body);
            }
        }
        let (status, bytes) = send(&shared, &method, &path, &headers, body.to_vec());
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            bytes,
        )
            .into_response()
    })
    .await
    .unwrap()
}

/// Forwards the items not picked for throttling and splices 429 results for the others into the
/// server's answer, in request order.
fn partial_bulk(
    shared: &Shared,
    pick: fn(&str) -> bool,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    // (throttled, action line, source line)
    let mut items: Vec<(bool, String, Option<String>)> = Vec::new();
    while let Some(action) = lines.next() {
        let parsed: Value = serde_json::from_str(action).expect("bulk action line");
        let (kind, meta) = parsed.as_object().unwrap().iter().next().unwrap();
        let source = (kind != "delete").then(|| lines.next().unwrap().to_owned());
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let version = meta.get("version").and_then(Value::as_i64);
        let throttle = pick(&id) && shared.seen.lock().unwrap().insert((id.clone(), version));
        if throttle {
            shared.throttled_items.lock().unwrap().push(id);
        }
        items.push((throttle, action.to_owned(), source));
    }
    let mut forwarded = String::new();
    for (throttled, action, source) in &items {
        if !throttled {
            forwarded.push_str(action);
            forwarded.push('\n');
            if let Some(s) = source {
                forwarded.push_str(s);
                forwarded.push('\n');
            }
        }
    }
    let mut answered: Vec<Value> = if forwarded.is_empty() {
        Vec::new()
    } else {
        let (status, bytes) = send(shared, method, path, headers, forwarded.into_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["items"].as_array().unwrap().clone()
    };
    answered.reverse();
    let mut out = Vec::new();
    for (throttled, action, _) in &items {
        if *throttled {
            let parsed: Value = serde_json::from_str(action).unwrap();
            let (kind, meta) = parsed.as_object().unwrap().iter().next().unwrap();
            out.push(json!({kind: {"_index": meta["_index"], "_id": meta["_id"], "status": 429,
                "error": {"type": "es_rejected_execution_exception", "reason": "injected by the test proxy"}}}));
        } else {
            out.push(answered.pop().expect("one answer per forwarded item"));
        }
    }
    let body = json!({"took": 1, "errors": true, "items": out});
    (StatusCode::OK, axum::Json(body)).into_response()
}
