//! A fault-injecting, counting HTTP proxy in front of the real search server, for the drills:
//! everything is forwarded to `osmem-server` unchanged except `_bulk` requests, which it can
//! throttle whole (429, nothing forwarded) or in part (some items held back and answered 429 in
//! the response; the others really applied by the server).
//!
//! Whatever the fault, it counts what the server did with every bulk item it forwarded, per
//! (index, document id, external version): applied (a 2xx answer) or refused as not newer
//! (409). With external versions one event is one (id, version), so an event applied twice
//! shows as a key applied more than once. While the server is down the proxy breaks the
//! connection, so the host sees an unreachable server as it would without the proxy.

use std::collections::{HashMap, HashSet};
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
    /// Nothing injected: every request is forwarded (only counted).
    None,
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
    /// (index, id, version) → (applied, refused as not newer) answers from the server.
    items: Mutex<HashMap<(String, String, Option<i64>), (usize, usize)>>,
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
            items: Mutex::new(HashMap::new()),
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

    /// Bulk items the server applied (answered 2xx), over all (index, id, version) keys.
    pub fn applied(&self) -> usize {
        self.shared
            .items
            .lock()
            .unwrap()
            .values()
            .map(|c| c.0)
            .sum()
    }

    /// Bulk items the server refused because its document was as new or newer (409).
    pub fn refused_as_stale(&self) -> usize {
        self.shared
            .items
            .lock()
            .unwrap()
            .values()
            .map(|c| c.1)
            .sum()
    }

    /// Applications beyond the first of one (index, id, version): an event applied twice.
    pub fn applied_again(&self) -> usize {
        self.shared
            .items
            .lock()
            .unwrap()
            .values()
            .map(|c| c.0.saturating_sub(1))
            .sum()
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
) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut request = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(format!("{}{path}", shared.upstream));
    for name in ["content-type", "authorization"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.as_bytes());
        }
    }
    let mut response = shared.agent.run(request.body(body).unwrap())?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    Ok((status, bytes))
}

/// A response whose body fails before any byte of it: the client's connection breaks, as it
/// would talking to a server that is down.
fn broken_connection() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("the search server is down"))
    });
    Response::new(axum::body::Body::from_stream(failing))
}

/// Counts the server's answers to the bulk items in `request` (an NDJSON bulk body), in order.
fn count_items(shared: &Shared, request: &[u8], answered: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<Value>(answered) else {
        return;
    };
    let Some(results) = answer["items"].as_array() else {
        return;
    };
    let text = String::from_utf8_lossy(request);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut results = results.iter();
    let mut items = shared.items.lock().unwrap();
    while let Some(action) = lines.next() {
        let parsed: Value = serde_json::from_str(action).expect("bulk action line");
        let (kind, meta) = parsed.as_object().unwrap().iter().next().unwrap();
        if kind != "delete" {
            lines.next();
        }
        let Some(result) = results.next() else { break };
        let status = result
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|r| r["status"].as_u64())
            .unwrap_or(0);
        let index = meta["_index"].as_str().unwrap_or_default().to_owned();
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let version = meta.get("version").and_then(Value::as_i64);
        let counts = items.entry((index, id, version)).or_default();
        match status {
            200..=299 => counts.0 += 1,
            409 => counts.1 += 1,
            _ => {}
        }
    }
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
        let Ok((status, bytes)) = send(&shared, &method, &path, &headers, body.to_vec()) else {
            return broken_connection();
        };
        if bulk && status == 200 {
            count_items(&shared, &body, &bytes);
        }
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
        let forwarded = forwarded.into_bytes();
        let Ok((status, bytes)) = send(shared, method, path, headers, forwarded.clone()) else {
            return broken_connection();
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        count_items(shared, &forwarded, &bytes);
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
