//! The admin API under abuse: requests an attacker (or a careless script) can send to the open
//! HTTP port must not cost the host memory, must not change anything without the token, and must
//! not slow the claim loops. Unauthenticated uploads are refused before their body is read,
//! bodies are bounded per route, uploads are bounded in number, the token is compared whole, and
//! the open reads run on a small pool of their own with a statement timeout.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const TOKEN: &str = "test-admin-token-0123456789";

/// The component limit of `PUT .../plugin` and the JSON limit of the other writes.
const COMPONENT_LIMIT: u64 = 64 << 20;
const JSON_LIMIT: u64 = 64 << 10;

/// Samples the host's RSS every 10 ms until dropped; `peak()` is the largest seen.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { peak_kib, stop }
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A request written by hand on a raw connection, to control when (and whether) its body goes.
struct Raw {
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    /// The write half once a body was streamed: kept open, since a half-closed connection is
    /// one the host may drop before answering.
    streamed: Option<tokio::sync::oneshot::Receiver<OwnedWriteHalf>>,
    buf: Vec<u8>,
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl Raw {
    /// Connects and sends the request head: `METHOD path`, `headers`, and `Content-Length:
    /// length` unless `headers` give a length or a transfer encoding.
    async fn send_head(
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: u64,
    ) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the host");
        let (rd, mut wr) = stream.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("content-length")
        }) {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head.push_str("\r\n");
        wr.write_all(head.as_bytes()).await.expect("send the head");
        Raw {
            rd,
            wr: Some(wr),
            streamed: None,
            buf: Vec::new(),
        }
    }

    /// The next response head (interim `100 Continue` included): status and text.
    async fn next_head(&mut self) -> std::io::Result<(u16, String)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((status, head));
            }
            let mut chunk = [0u8; 8192];
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The final answer (interim answers skipped), its body read by `Content-Length`.
    async fn answer(&mut self) -> std::io::Result<Answer> {
        let (status, head) = loop {
            let (status, head) = self.next_head().await?;
            if status >= 200 {
                break (status, head);
            }
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < length {
            let mut chunk = [0u8; 8192];
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..length.min(self.buf.len())).collect();
        Ok(Answer {
            status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    }

    /// Whether the host closes the connection (EOF or reset) within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 8192];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Streams `length` bytes of `fill` as the body in 1 MiB writes, counting what was sent into
    /// `sent`, until done or the host stops reading.
    fn stream_body(&mut self, length: u64, fill: u8, sent: Arc<AtomicU64>) {
        let mut wr = self.wr.take().expect("the body is sent once");
        let (keep, kept) = tokio::sync::oneshot::channel();
        self.streamed = Some(kept);
        tokio::spawn(async move {
            let chunk = vec![fill; 1 << 20];
            let mut left = length;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if wr.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                sent.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
            let _ = wr.flush().await;
            let _ = keep.send(wr);
        });
    }

    /// Sends `bytes` on the connection (the rest of a body).
    async fn send(&mut self, bytes: &[u8]) {
        let wr = self.wr.as_mut().expect("the connection is writable");
        wr.write_all(bytes).await.expect("send");
    }
}

/// What happened to a request that announced a big body and held it back.
#[derive(Debug)]
struct HeldBack {
    answer: Answer,
    /// Body bytes the client had sent when the answer came.
    body_sent_before_answer: u64,
    /// Time from the head to the answer.
    answered_after: Duration,
    /// Whether the host then closed the connection.
    closed: bool,
}

/// Sends a head announcing `length` body bytes, then waits `patience` for an answer. A host
/// that has not answered by then gets the whole body streamed (as an impatient client would
/// do), and the answer is read after that.
async fn hold_back_body(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    length: u64,
    patience: Duration,
) -> HeldBack {
    let started = Instant::now();
    let mut raw = Raw::send_head(port, method, path, headers, length).await;
    let sent = Arc::new(AtomicU64::new(0));
    let answer = match tokio::time::timeout(patience, raw.answer()).await {
        Ok(answer) => answer,
        Err(_) => {
            raw.stream_body(length, b' ', sent.clone());
            raw.answer().await
        }
    }
    .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    let body_sent_before_answer = sent.load(Ordering::Relaxed);
    let answered_after = started.elapsed();
    let closed = raw.closed_within(secs(5)).await;
    HeldBack {
        answer,
        body_sent_before_answer,
        answered_after,
        closed,
    }
}

/// What a write could change: plugin versions, pauses, audit rows, rebuilds.
async fn writable_state(pool: &sqlx::PgPool) -> Value {
    let (versions, pauses, audits, rebuilds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM plugin_versions), (SELECT count(*) FROM projection_pauses),
                (SELECT count(*) FROM replay_audit), (SELECT count(*) FROM projector_rebuilds)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let active: Option<String> =
        sqlx::query_scalar("SELECT digest FROM plugin_versions WHERE status = 'active'")
            .fetch_optional(pool)
            .await
            .unwrap();
    json!({"versions": versions, "pauses": pauses, "audits": audits, "rebuilds": rebuilds,
           "active": active})
}

async fn host_with(db: &TestDb, plugin_name: &str, env: &[(&str, &str)]) -> Host {
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin(plugin_name))],
        env,
    );
    host.wait_ready(PATIENCE);
    host
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_unauthenticated_60_mib_uploads_are_refused_before_their_bodies_are_read() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "noop", &[("OUTBOX_ADMIN_TOKEN", TOKEN)]).await;
    let before = writable_state(&db.pool).await;
    let baseline = rss_mib(host.pid());
    let sampler = RssSampler::start(host.pid());

    // No token, a wrong one, another scheme: 12 at once, each announcing 60 MiB.
    let length = 60u64 << 20;
    let auths = [
        None,
        Some("Bearer wrong-token-wrong-token-wrong"),
        Some("Basic b3BzOnNlY3JldA=="),
    ];
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let port = host.port;
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = auths[i % 3]
                    .map(|a| vec![("Authorization", a)])
                    .unwrap_or_default();
                hold_back_body(
                    port,
                    "PUT",
                    "/projections/p/plugin",
                    &headers,
                    length,
                    secs(3),
                )
                .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak = sampler.peak_mib();
    drop(sampler);
    let slowest = results.iter().map(|r| r.answered_after).max().unwrap();
    let body_sent: u64 = results.iter().map(|r| r.body_sent_before_answer).sum();
    println!(
        "12 unauthenticated uploads of 60 MiB: host RSS {baseline:.1} MiB before, peak \
         {peak:.1} MiB (+{:.1}); slowest answer after {slowest:?}; body bytes sent before the \
         answers: {body_sent}",
        peak - baseline
    );
    for r in &results {
        assert_eq!(r.answer.status, 401, "{r:?}");
        assert_eq!(
            r.body_sent_before_answer, 0,
            "answered only after the body was sent: {r:?}"
        );
        assert!(r.closed, "the host closes the connection: {r:?}");
        assert!(r.answer.error().contains("token"), "{r:?}");
    }
    assert!(
        peak - baseline < 100.0,
        "RSS grew by {:.1} MiB",
        peak - baseline
    );
    assert_eq!(writable_state(&db.pool).await, before, "nothing changed");
    assert_eq!(host.send("GET", "/status", None, b"").0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_token_configured_an_upload_is_403_before_its_body_is_read() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "noop", &[]).await;
    let before = writable_state(&db.pool).await;
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, length) in [
        ("PUT", "/projections/p/plugin", 60u64 << 20),
        ("POST", "/projections/p/pause", 1 << 20),
    ] {
        let r = hold_back_body(
            host.port,
            method,
            path,
            &[("Authorization", &bearer)],
            length,
            secs(3),
        )
        .await;
        assert_eq!(r.answer.status, 403, "{method} {path}: {r:?}");
        assert_eq!(r.body_sent_before_answer, 0, "{method} {path}: {r:?}");
        assert!(r.answer.error().contains("OUTBOX_ADMIN_TOKEN"), "{r:?}");
    }
    assert_eq!(writable_state(&db.pool).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_a_routes_limit_are_413_naming_the_limit_and_change_nothing() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "noop", &[("OUTBOX_ADMIN_TOKEN", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let before = writable_state(&db.pool).await;

    // Announced too large: refused before a byte of the body.
    for (path, length, limit) in [
        ("/projections/p/pause", JSON_LIMIT + 1, JSON_LIMIT),
        ("/projections/p/replay", 1 << 20, JSON_LIMIT),
        ("/projections/p/rebuild", 1 << 20, JSON_LIMIT),
    ] {
        let r = hold_back_body(host.port, "POST", path, &auth, length, secs(3)).await;
        assert_eq!(r.answer.status, 413, "POST {path}: {r:?}");
        assert_eq!(r.body_sent_before_answer, 0, "POST {path}: {r:?}");
        assert!(r.answer.error().contains(&limit.to_string()), "{r:?}");
    }
    let r = hold_back_body(
        host.port,
        "PUT",
        "/projections/p/plugin",
        &auth,
        COMPONENT_LIMIT + 1,
        secs(3),
    )
    .await;
    assert_eq!(r.answer.status, 413, "{r:?}");
    assert_eq!(r.body_sent_before_answer, 0, "{r:?}");
    assert!(
        r.answer.error().contains(&COMPONENT_LIMIT.to_string()),
        "{r:?}"
    );

    // Chunked (no length announced): a valid JSON body of 100 KiB is cut at the limit.
    let mut raw = Raw::send_head(
        host.port,
        "POST",
        "/projections/p/pause",
        &[("Authorization", &bearer), ("Transfer-Encoding", "chunked")],
        0,
    )
    .await;
    let big = json!({"reason": "x".repeat(100 << 10)}).to_string();
    let mut chunked = Vec::new();
    for piece in big.as_bytes().chunks(16 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    raw.send(&chunked).await;
    let a = raw.answer().await.expect("an answer to the chunked body");
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.error().contains(&JSON_LIMIT.to_string()), "{a:?}");
    assert_eq!(writable_state(&db.pool).await, before, "nothing changed");

    // Just under the limit is fine.
    let fits = json!({"reason": "x".repeat(60 << 10)}).to_string();
    let (status, answer) = host.send("POST", "/projections/p/pause", Some(TOKEN), fits.as_bytes());
    assert_eq!(status, 200, "{answer}");
    let pauses: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pauses, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_upload_while_two_are_in_progress_is_429_and_the_two_proceed() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "scripted", &[("OUTBOX_ADMIN_TOKEN", TOKEN)]).await;
    let noop = std::fs::read(plugin("noop")).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let length = noop.len().to_string();

    // Two uploads whose bodies are being read: the host asked for them (100 Continue), so each
    // holds an upload slot; their bodies are held back for now.
    let mut in_progress = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::send_head(
            host.port,
            "PUT",
            "/projections/p/plugin",
            &[
                ("Authorization", &bearer),
                ("X-Projector-By", "slow-uploader"),
                ("Expect", "100-continue"),
                ("Content-Length", &length),
            ],
            0,
        )
        .await;
        let (status, head) = tokio::time::timeout(secs(10), raw.next_head())
            .await
            .expect("the host asks for the body")
            .unwrap();
        assert_eq!(status, 100, "{head}");
        in_progress.push(raw);
    }

    let started = Instant::now();
    let (status, answer) = tokio::task::block_in_place(|| {
        host.send("PUT", "/projections/p/plugin", Some(TOKEN), &noop)
    });
    println!(
        "third upload while two are in progress: {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or("").contains('2'),
        "{answer}"
    );

    for raw in &mut in_progress {
        raw.send(&noop).await;
    }
    for raw in &mut in_progress {
        let a = raw.answer().await.expect("the upload's answer");
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["status"], "active", "{a:?}");
    }
    let by: String = sqlx::query_scalar(
        "SELECT activated_by FROM plugin_versions WHERE projection = 'p' AND status = 'active'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(by, "slow-uploader");

    // The slots are free again.
    let (status, answer) = tokio::task::block_in_place(|| {
        host.send("PUT", "/projections/p/plugin", Some(TOKEN), &noop)
    });
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_is_almost_right_is_401() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "noop", &[("OUTBOX_ADMIN_TOKEN", TOKEN)]).await;
    let same_length_last_differs = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    let same_length_first_differs = format!("X{}", &TOKEN[1..]);
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}0");
    let upper = TOKEN.to_uppercase();
    for wrong in [
        same_length_last_differs.as_str(),
        same_length_first_differs.as_str(),
        prefix,
        longer.as_str(),
        upper.as_str(),
        "",
        " ",
    ] {
        let (status, answer) = host.send("POST", "/projections/p/pause", Some(wrong), b"{}");
        assert_eq!(status, 401, "token {wrong:?}: {answer}");
    }
    let pauses: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pauses, 0);
    let (status, answer) = host.send("POST", "/projections/p/pause", Some(TOKEN), b"{}");
    assert_eq!(status, 200, "{answer}");
}

/// Seconds from `created_at` to `done_at` of the events of `p` with these ids.
async fn pickup_latencies(pool: &sqlx::PgPool, ids: &[uuid::Uuid]) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM done_at - created_at)::float8 FROM outbox_events
         WHERE id = ANY($1) AND done_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A transaction holding `replay_audit` locked (every audit read waits) until it ends.
async fn lock_audit(db: &TestDb) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE replay_audit IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    locker
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_blocked_past_the_statement_timeout_is_503_and_claims_go_on_meanwhile() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "scripted", &[]).await;

    // A read that cannot finish: the audit table is locked by another session.
    let locker = lock_audit(&db).await;
    let port = host.port;
    let reader = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(secs(30)))
            .build()
            .into();
        let mut response = agent
            .get(&format!("http://127.0.0.1:{port}/projections/p/audit"))
            .call()
            .expect("an answer");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, retry_after, body, started.elapsed())
    });

    // Meanwhile the host's own connection count for reads stays at the read pool's size, and
    // events are delivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'projector-http-reads'
           AND datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let ids = insert_events(
        &db.pool,
        &[NewEvent::new("p", "a", json!({"outcome": "success"}))],
    )
    .await;
    wait_until("the event is done", secs(4), async || {
        pickup_latencies(&db.pool, &ids).await.len() == 1
    })
    .await;
    let latency = pickup_latencies(&db.pool, &ids).await[0];

    // Released after 9 s whatever happened (a host without a statement timeout answers then).
    let released = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(8500)).await;
        locker.rollback().await.unwrap();
    });
    let (status, retry_after, body, took) = reader.await.unwrap();
    released.await.unwrap();
    println!(
        "a read blocked by a lock: {status} after {took:?} ({body}); read connections while \
         blocked: {readers}; an event inserted meanwhile was done {latency:.3} s after it was \
         written"
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("statement timeout"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert!(
        took >= Duration::from_millis(4500) && took < secs(8),
        "{took:?}"
    );
    assert!(
        (1..=2).contains(&readers),
        "{readers} read connections: the read runs on the read pool"
    );
    assert!(latency < 2.0, "pickup took {latency} s");
}

/// `n` threads requesting `paths[i % paths.len()]` (thread i) over and over until stopped,
/// keeping every answer's status (0 when nothing answered).
struct ReadLoops {
    stop: Arc<AtomicBool>,
    answers: Arc<std::sync::Mutex<Vec<u16>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ReadLoops {
    fn start(port: u16, paths: &'static [&'static str], n: usize) -> ReadLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Arc<std::sync::Mutex<Vec<u16>>> = Default::default();
        let threads = (0..n)
            .map(|i| {
                let (stop, answers) = (stop.clone(), answers.clone());
                let path = paths[i % paths.len()];
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .proxy(None)
                        .http_status_as_error(false)
                        .timeout_global(Some(secs(30)))
                        .build()
                        .into();
                    while !stop.load(Ordering::Relaxed) {
                        let status = agent
                            .get(&format!("http://127.0.0.1:{port}{path}"))
                            .call()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        answers.lock().unwrap().push(status);
                    }
                })
            })
            .collect();
        ReadLoops {
            stop,
            answers,
            threads,
        }
    }

    /// Stops the loops and returns the statuses they got.
    fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

/// `N answers (a 200, b 503, c other)`.
fn tally(answers: &[u16]) -> String {
    let count = |s: u16| answers.iter().filter(|a| **a == s).count();
    format!(
        "{} answers ({} 200, {} 503, {} other)",
        answers.len(),
        count(200),
        count(503),
        answers.len() - count(200) - count(503)
    )
}

/// Inserts event `a<i>` of projection `p` (an application's single-row commit); its id.
async fn offer_event(db: &TestDb, i: usize) -> uuid::Uuid {
    insert_events(
        &db.pool,
        &[NewEvent::new(
            "p",
            format!("a{i}"),
            json!({"outcome": "success"}),
        )],
    )
    .await[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_loops_of_slow_reads_do_not_slow_the_pickup_of_new_events() {
    let db = TestDb::new().await;
    db.migrate();
    let host = host_with(&db, "scripted", &[]).await;

    // Reads that take long: the audit table is locked for the whole hammering, so every audit
    // read waits (up to the statement timeout) holding whatever connection it got.
    let locker = lock_audit(&db).await;
    let loops = ReadLoops::start(host.port, &["/projections/p/audit", "/status"], 12);

    // One event every 250 ms for 6 s while the loops run.
    let mut ids = Vec::new();
    let mut max_readers = 0i64;
    for i in 0..24 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ids.push(offer_event(&db, i).await);
        let readers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'projector-http-reads'
           AND datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        max_readers = max_readers.max(readers);
    }
    // Up to 10 s for the last ones; then the lock goes and the loops stop whatever happened (a
    // host whose reads share the claim loops' pool picks the events up only then).
    let deadline = Instant::now() + secs(10);
    while pickup_latencies(&db.pool, &ids).await.len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    locker.rollback().await.unwrap();
    let answers = loops.stop();
    wait_until("every event is done", PATIENCE, async || {
        pickup_latencies(&db.pool, &ids).await.len() == ids.len()
    })
    .await;
    let latencies = pickup_latencies(&db.pool, &ids).await;
    let worst = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "12 read loops (half of them blocked): {}; {} events picked up in median {:.3} s, \
         worst {worst:.3} s; read connections at most {max_readers}",
        tally(&answers),
        latencies.len(),
        median(&latencies),
    );
    assert!(worst < 2.0, "pickup took up to {worst} s");
    assert!(
        (1..=2).contains(&max_readers),
        "{max_readers} read connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_get_status_loops_over_300k_done_rows_leave_the_pickup_of_new_events_fast() {
    let db = TestDb::new().await;
    db.migrate();
    // A history that makes `GET /status` cost a real scan.
    let rows = 300_000i64;
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload, status, done_at)
         SELECT 'p', 'test.event', 'old' || (i % 1000), '{}'::jsonb, 'done', now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox_events")
        .execute(&db.pool)
        .await
        .unwrap();
    let inserted_in = t.elapsed();
    let host = host_with(&db, "scripted", &[]).await;
    let t = Instant::now();
    let (status, answer) = host.send("GET", "/status", None, b"");
    let one_status = t.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["projections"][0]["counts"]["done"], rows);

    let loops = ReadLoops::start(host.port, &["/status"], 12);
    // One event every 250 ms for 5 s while the loops run.
    let mut ids = Vec::new();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ids.push(offer_event(&db, i).await);
    }
    wait_until("every event is done", PATIENCE, async || {
        pickup_latencies(&db.pool, &ids).await.len() == ids.len()
    })
    .await;
    let answers = loops.stop();
    let latencies = pickup_latencies(&db.pool, &ids).await;
    let worst = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "{rows} done rows (inserted in {inserted_in:?}); one GET /status took {one_status:?}; \
         12 GET /status loops: {}; {} events picked up in median {:.3} s, worst {worst:.3} s",
        tally(&answers),
        latencies.len(),
        median(&latencies),
    );
    assert!(worst < 0.5, "pickup took up to {worst} s");
    assert!(answers.contains(&200), "the reads were answered");
}
