//! The `search-index` plugin and the `search` capability against a real search server
//! (`osmem-server`, OpenSearch-compatible): the index ends up as a fold of the events, duplicate
//! and stale deliveries change nothing, a mapping conflict fails only its own event, an outage is
//! retried until the server is back, and a projection can only write what it was granted.
//!
//! Drills A (server down), B (throttling), C (poison event), D (partial bulk success) and G
//! (duplicate delivery) of seed 003 are here, each named `drill_<letter>_...`; each ends with the
//! index equal to the fold of all events and prints its row of the drill table.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgPool;
use uuid::Uuid;

const PROJECTION: &str = "search";
const INDEX: &str = "wordloom-search";

/// A config file running the search-index plugin as `projection`, writing `index` (none if
/// `None`), granted `granted` (no `[projection.grants]` at all if empty).
fn projection_toml(projection: &str, index: Option<&str>, granted: &[&str], extra: &str) -> String {
    let mut text = format!(
        "[[projection]]\nname = \"{projection}\"\nplugin = \"{}\"\n{extra}\n",
        plugin("search_index").display()
    );
    if let Some(index) = index {
        text.push_str(&format!("[projection.config]\nindex = \"{index}\"\n"));
    }
    if !granted.is_empty() {
        let list: Vec<String> = granted.iter().map(|g| format!("\"{g}\"")).collect();
        text.push_str(&format!(
            "[projection.grants]\nsearch_indices = [{}]\n",
            list.join(", ")
        ));
    }
    text
}

/// `projector run --config <toml>` against `db`, writing to `es`.
fn start_host(
    db: &TestDb,
    elastic_url: &str,
    dir: &Path,
    toml: &str,
    env: &[(&str, &str)],
) -> Host {
    let config = write_file(dir, "projector.toml", toml);
    let mut full_env = vec![
        ("ELASTIC_URL", elastic_url),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ];
    full_env.extend_from_slice(env);
    let mut host = Host::start(
        &db.url,
        &["--config", config.to_str().expect("utf-8 path")],
        &full_env,
    );
    host.wait_ready(PATIENCE);
    host
}

/// An event of `entity` (`book`, `block`, `tag`) on aggregate `id`.
fn event(entity: &str, action: &str, id: &str, payload: Value) -> NewEvent {
    NewEvent::new(PROJECTION, id, payload)
        .event_type(&format!("{entity}.{action}"))
        .aggregate_type(entity)
}

/// The document the plugin makes of one event: the payload plus the fields it owns.
fn document_of(row: &EventRow) -> Value {
    let mut doc: Map<String, Value> = row.payload.as_object().expect("object payload").clone();
    let entity = row.event_type.split('.').next().unwrap();
    doc.insert("entityType".into(), json!(entity));
    doc.insert("entityId".into(), json!(row.aggregate_id));
    doc.insert("eventType".into(), json!(row.event_type));
    doc.insert("eventSeq".into(), json!(row.seq));
    Value::Object(doc)
}

/// What the index must hold after `rows` (in `seq` order): id → (document, version).
fn fold(rows: &[EventRow]) -> BTreeMap<String, StoredDoc> {
    let mut docs = BTreeMap::new();
    for row in rows {
        if row.event_type.ends_with(".deleted") {
            docs.remove(&row.aggregate_id);
        } else {
            let doc = StoredDoc {
                source: document_of(row),
                version: row.seq,
            };
            docs.insert(row.aggregate_id.clone(), doc);
        }
    }
    docs
}

/// Asserts that `index` holds exactly `expected`, naming the first difference.
fn assert_index_holds(es: &Osmem, index: &str, expected: &BTreeMap<String, StoredDoc>) {
    let actual = es.documents(index);
    for (id, want) in expected {
        match actual.get(id) {
            Some(got) => assert_eq!(got, want, "document {id}"),
            None => panic!("document {id} is missing; expected {want:?}"),
        }
    }
    let extra: Vec<&String> = actual
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(
        extra.is_empty(),
        "documents that should not exist: {extra:?}"
    );
}

/// A small deterministic generator (xorshift), so a failing run can be reproduced.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The entity's fields after a change, with the seeds' envelope on some of them.
fn payload(rng: &mut Rng, entity: &str, id: &str, n: usize) -> Value {
    let mut p = match entity {
        "book" => json!({
            "title": format!("Book {id} – édition {n}"),
            "body": format!("chapter {} of {id}", rng.below(1000)),
            "pages": rng.below(900) + 1,
        }),
        "block" => json!({
            "content": format!("block text {n} 沙丘 {}", rng.below(1000)),
            "bookId": format!("book-{:02}", rng.below(20)),
            "position": rng.below(50),
        }),
        _ => {
            let color = ["red", "green", "blue"][rng.below(3) as usize];
            json!({"name": format!("tag-{id}-{n}"), "color": color})
        }
    };
    if rng.below(2) == 0 {
        let map = p.as_object_mut().unwrap();
        map.insert("tenantId".into(), json!("tenant-1"));
        map.insert("requestId".into(), json!(format!("req-{n}")));
        map.insert("correlationId".into(), json!(format!("corr-{n}")));
        map.insert("source".into(), json!("api"));
        map.insert("occurredAt".into(), json!("2025-11-08T10:00:00Z"));
        map.insert("aggregateId".into(), json!(id));
    }
    p
}

/// `count` events over 20 books, 20 blocks and 20 tags: each aggregate is created, then
/// updated, renamed or deleted (and sometimes created again after a delete).
fn random_history(count: usize, seed: u64) -> Vec<NewEvent> {
    let mut rng = Rng(seed);
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let entity = ["book", "block", "tag"][rng.below(3) as usize];
        let id = format!("{entity}-{:02}", rng.below(20));
        let exists = live.get(&id).copied().unwrap_or(false);
        let action = if !exists {
            "created"
        } else {
            match rng.below(20) {
                0..=8 => "updated",
                9..=14 => "renamed",
                _ => "deleted",
            }
        };
        live.insert(id.clone(), action != "deleted");
        let body = if action == "deleted" {
            json!({"aggregateId": id})
        } else {
            payload(&mut rng, entity, &id, n)
        };
        out.push(event(entity, action, &id, body));
    }
    out
}

/// Checks the sink's own count of applications (the proxy in front of the server): every
/// (document, external version) was applied at most once. Returns the applications beyond the
/// first, for the drill row.
fn assert_applied_at_most_once(proxy: &FaultProxy) -> i64 {
    let again = proxy.applied_again();
    eprintln!(
        "sink: {} bulk items applied, {} refused as not newer, {again} applied again",
        proxy.applied(),
        proxy.refused_as_stale()
    );
    assert_eq!(again, 0, "documents applied twice at the same version");
    again as i64
}

/// Events taken over from an expired lease, from the host's metric.
fn reclaimed(host: &Host) -> f64 {
    host.metric_sum("projector_reclaimed_total", &[("projection", PROJECTION)])
}

/// Puts the events `seqs` back to pending with no attempt used, as an operator replay would.
async fn redeliver(pool: &PgPool, seqs: &[i64]) {
    let n = sqlx::query(
        "UPDATE outbox_events
            SET status = 'pending', attempts = 0, next_retry_at = now(), done_at = NULL,
                error_reason = NULL, error = NULL, failure_kind = NULL
          WHERE projection = $1 AND seq = ANY($2)",
    )
    .bind(PROJECTION)
    .bind(seqs)
    .execute(pool)
    .await
    .expect("reset events to pending")
    .rows_affected();
    assert_eq!(n as usize, seqs.len(), "every event reset");
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_g_the_index_is_the_fold_of_500_events_and_redelivering_them_all_changes_nothing() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&es.url, Fault::None);
    let history = random_history(500, 0x5eed_0003);
    insert_events(&db.pool, &history).await;
    let host = start_host(
        &db,
        &proxy.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        &[],
    );

    let counts = wait_settled(&db.pool, PROJECTION, 500, PATIENCE).await;
    let rows = events(&db.pool, PROJECTION).await;
    let not_done: Vec<_> = rows
        .iter()
        .filter(|r| r.status != "done")
        .map(|r| (r.seq, &r.event_type, &r.error_reason, &r.error))
        .collect();
    assert!(not_done.is_empty(), "{counts:?}: {not_done:?}");
    let expected = fold(&rows);
    let deleted = rows
        .iter()
        .map(|r| &r.aggregate_id)
        .filter(|id| !expected.contains_key(*id))
        .collect::<std::collections::BTreeSet<_>>();
    assert!(
        expected.len() >= 30 && !deleted.is_empty(),
        "the history exercises live and deleted documents ({} live, {} deleted)",
        expected.len(),
        deleted.len()
    );
    assert_index_holds(&es, INDEX, &expected);

    // Every event delivered again, in order: each write meets a version at least as new (or a
    // delete's tombstone) and is answered 409, which the plugin counts as success.
    let reset_at = chrono::Utc::now();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    redeliver(&db.pool, &seqs).await;
    wait_settled(&db.pool, PROJECTION, 500, PATIENCE).await;
    for row in events(&db.pool, PROJECTION).await {
        assert_eq!(row.status, "done", "event {} redelivered", row.seq);
        assert_eq!(row.attempts, 1, "event {} delivered once more", row.seq);
        assert!(
            row.done_at.expect("done_at") > reset_at,
            "event {} was redelivered",
            row.seq
        );
    }
    assert_index_holds(&es, INDEX, &expected);
    // Each redelivered write met its own version and changed nothing: the server answered 409
    // to every redelivered write (a delete of a deleted document is a 404, not counted).
    let duplicated = assert_applied_at_most_once(&proxy);
    let writes = rows
        .iter()
        .filter(|r| !r.event_type.ends_with(".deleted"))
        .count();
    assert!(
        proxy.refused_as_stale() >= writes,
        "every redelivered write reached the server and was refused: {} of {writes}",
        proxy.refused_as_stale()
    );
    drill_report(&db.pool, "G", &[PROJECTION], reclaimed(&host), duplicated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_event_delivered_after_a_newer_one_is_a_no_op() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    insert_events(
        &db.pool,
        &[
            event(
                "book",
                "created",
                "book-1",
                json!({"title": "Dune", "pages": 412}),
            ),
            event(
                "book",
                "renamed",
                "book-1",
                json!({"title": "Dune (2nd ed.)", "pages": 412}),
            ),
            event("tag", "created", "tag-1", json!({"name": "sf"})),
            event("tag", "deleted", "tag-1", json!({})),
        ],
    )
    .await;
    let _host = start_host(
        &db,
        &es.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        &[],
    );
    wait_settled(&db.pool, PROJECTION, 4, PATIENCE).await;
    let rows = events(&db.pool, PROJECTION).await;
    assert!(rows.iter().all(|r| r.status == "done"), "{rows:?}");
    let expected = fold(&rows);
    assert_eq!(expected.len(), 1);
    assert_eq!(expected["book-1"].source["title"], json!("Dune (2nd ed.)"));
    assert_index_holds(&es, INDEX, &expected);

    // The creations come again, after the rename and the delete that superseded them.
    let reset_at = chrono::Utc::now();
    redeliver(&db.pool, &[rows[0].seq, rows[2].seq]).await;
    wait_until("the stale events are done again", PATIENCE, async || {
        let rows = events(&db.pool, PROJECTION).await;
        [&rows[0], &rows[2]]
            .iter()
            .all(|r| r.status == "done" && r.done_at.is_some_and(|d| d > reset_at))
    })
    .await;
    let after = events(&db.pool, PROJECTION).await;
    assert_eq!(after[0].error_reason, None);
    assert_eq!(after[0].attempts, 1);
    assert_eq!(after[2].attempts, 1);
    // Still the renamed book (version = the rename's seq), and the deleted tag is not back.
    assert_index_holds(&es, INDEX, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_c_a_poison_event_fails_alone_and_the_rest_of_its_bulk_is_applied() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    es.create_index(INDEX, json!({"properties": {"pages": {"type": "integer"}}}));
    let dir = tempfile::tempdir().unwrap();
    // Twenty books inserted before the host starts: its one loop claims them as one batch.
    let batch: Vec<NewEvent> = (0..20)
        .map(|i| {
            let pages = if i == 7 {
                json!("many")
            } else {
                json!(100 + i)
            };
            let id = format!("book-{i:02}");
            event(
                "book",
                "created",
                &id,
                json!({"title": format!("Book {i}"), "pages": pages}),
            )
        })
        .collect();
    let ids = insert_events(&db.pool, &batch).await;
    let proxy = FaultProxy::start(&es.url, Fault::None);
    let host = start_host(
        &db,
        &proxy.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        &[("OUTBOX_BATCH_SIZE", "20"), ("OUTBOX_CONCURRENCY", "1")],
    );
    let counts = wait_settled(&db.pool, PROJECTION, 20, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 19,
            failed: 1,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, PROJECTION).await;
    let batches: std::collections::BTreeSet<Option<Uuid>> =
        rows.iter().map(|r| r.claim_batch_id).collect();
    assert_eq!(
        batches.len(),
        1,
        "all twenty went in one batch: {batches:?}"
    );
    for row in &rows {
        if row.id == ids[7] {
            assert_eq!(row.status, "failed");
            assert_eq!(row.error_reason.as_deref(), Some("es_mapping"));
            assert_eq!(row.failure_kind.as_deref(), Some("deterministic"));
            assert_eq!(row.attempts, 1, "a deterministic failure is not retried");
            let error = row.error.as_deref().unwrap_or_default();
            assert!(error.contains("mapper_parsing_exception"), "{error}");
        } else {
            assert_eq!(row.status, "done", "event {}: {:?}", row.seq, row.error);
        }
    }
    let good: Vec<EventRow> = rows.into_iter().filter(|r| r.id != ids[7]).collect();
    assert_index_holds(&es, INDEX, &fold(&good));
    let duplicated = assert_applied_at_most_once(&proxy);
    drill_report(&db.pool, "C", &[PROJECTION], reclaimed(&host), duplicated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_a_while_the_search_server_is_down_events_wait_with_es_connect_and_drain_when_it_is_back(
) {
    let db = TestDb::new().await;
    db.migrate();
    let mut es = Osmem::start();
    es.stop();
    // While the server is down the proxy breaks every connection, as the server would refuse it.
    let proxy = FaultProxy::start(&es.url, Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let mut host = start_host(
        &db,
        &proxy.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        // Enough attempts to outlast the outage; retries at most every half second (FAST).
        &[("OUTBOX_MAX_ATTEMPTS", "1000")],
    );
    let history = random_history(60, 0xdead_e5);
    insert_events(&db.pool, &history).await;

    wait_until(
        "events are pending with es_connect after failed attempts",
        PATIENCE,
        async || {
            let rows = events(&db.pool, PROJECTION).await;
            rows.iter().any(|r| r.attempts >= 2)
                && rows
                    .iter()
                    .filter(|r| r.attempts > 0)
                    .all(|r| r.status != "done" && r.status != "failed")
                && rows.iter().any(|r| {
                    r.status == "pending" && r.error_reason.as_deref() == Some("es_connect")
                })
        },
    )
    .await;
    let rows = events(&db.pool, PROJECTION).await;
    assert!(rows
        .iter()
        .all(|r| r.status == "pending" || r.status == "processing"));
    for r in rows
        .iter()
        .filter(|r| r.status == "pending" && r.attempts > 0)
    {
        assert_eq!(
            r.error_reason.as_deref(),
            Some("es_connect"),
            "event {}",
            r.seq
        );
    }
    assert!(
        host.metric_sum(
            "outbox_retry_scheduled_total",
            &[("projection", PROJECTION), ("reason", "es_connect")]
        ) >= 2.0
    );

    es.restart();
    let counts = wait_settled(&db.pool, PROJECTION, 60, PATIENCE).await;
    assert_eq!(counts.done, 60, "none lost: {counts:?}");
    let rows = events(&db.pool, PROJECTION).await;
    assert_index_holds(&es, INDEX, &fold(&rows));
    assert!(host.is_ready());
    let duplicated = assert_applied_at_most_once(&proxy);
    drill_report(&db.pool, "A", &[PROJECTION], reclaimed(&host), duplicated).await;
    host.sigterm();
    assert_eq!(host.wait_exit(PATIENCE).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_b_a_throttling_server_gets_backoff_with_es_429_and_the_backlog_drains() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    // The first eight bulk requests are answered 429 whole, as a server shedding load does.
    let proxy = FaultProxy::start(&es.url, Fault::ThrottleRequests(8));
    let dir = tempfile::tempdir().unwrap();
    let history = random_history(200, 0xb_429);
    insert_events(&db.pool, &history).await;
    let host = start_host(
        &db,
        &proxy.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        &[("OUTBOX_MAX_ATTEMPTS", "20")],
    );
    let counts = wait_settled(&db.pool, PROJECTION, 200, PATIENCE).await;
    assert_eq!(counts.done, 200, "none lost: {counts:?}");
    assert!(proxy.throttled_requests() >= 8);
    let retried = host.metric_sum(
        "outbox_retry_scheduled_total",
        &[("projection", PROJECTION), ("reason", "es_429")],
    );
    assert!(retried >= 8.0, "retries scheduled with es_429: {retried}");
    // The throttled batches' events were retried, not failed.
    let rows = events(&db.pool, PROJECTION).await;
    assert!(rows.iter().any(|r| r.attempts > 1));
    assert_index_holds(&es, INDEX, &fold(&rows));
    let duplicated = assert_applied_at_most_once(&proxy);
    drill_report(&db.pool, "B", &[PROJECTION], reclaimed(&host), duplicated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_d_a_partly_successful_bulk_retries_only_its_failed_items() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    // Items of aggregates whose id ends in an even digit are throttled (429) the first time.
    fn even(id: &str) -> bool {
        id.chars()
            .last()
            .and_then(|c| c.to_digit(10))
            .is_some_and(|d| d % 2 == 0)
    }
    let proxy = FaultProxy::start(&es.url, Fault::ThrottleItems(even));
    let dir = tempfile::tempdir().unwrap();
    // One event per aggregate, so a retry never waits on an earlier event of its aggregate.
    let batch: Vec<NewEvent> = (0..40)
        .map(|i| {
            let id = format!("book-{i:02}");
            event(
                "book",
                "created",
                &id,
                json!({"title": format!("Book {i}")}),
            )
        })
        .collect();
    insert_events(&db.pool, &batch).await;
    let host = start_host(
        &db,
        &proxy.url,
        dir.path(),
        &projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
        &[("OUTBOX_BATCH_SIZE", "40"), ("OUTBOX_CONCURRENCY", "1")],
    );
    let counts = wait_settled(&db.pool, PROJECTION, 40, PATIENCE).await;
    assert_eq!(counts.done, 40, "{counts:?}");
    let throttled = proxy.throttled_items();
    assert_eq!(throttled.len(), 20, "{throttled:?}");
    for row in events(&db.pool, PROJECTION).await {
        let expected = if even(&row.aggregate_id) { 2 } else { 1 };
        assert_eq!(
            row.attempts, expected,
            "{}: only the throttled items are retried",
            row.aggregate_id
        );
    }
    let rows = events(&db.pool, PROJECTION).await;
    assert_index_holds(&es, INDEX, &fold(&rows));
    let duplicated = assert_applied_at_most_once(&proxy);
    drill_report(&db.pool, "D", &[PROJECTION], reclaimed(&host), duplicated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_server_that_never_answers_costs_a_batch_no_more_than_its_budget() {
    let db = TestDb::new().await;
    db.migrate();
    // Accepts connections and reads requests, but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "projector.toml",
        projection_toml(PROJECTION, Some(INDEX), &[INDEX], ""),
    );
    let mut host = Host::start(
        &db.url,
        &["--config", config.to_str().unwrap()],
        &[
            ("ELASTIC_URL", url.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("OUTBOX_MAX_PROCESSING_SECONDS", "1.5"),
            ("OUTBOX_MAX_ATTEMPTS", "1000"),
        ],
    );
    host.wait_ready(PATIENCE);
    insert_events(
        &db.pool,
        &[event("book", "created", "book-1", json!({"title": "Dune"}))],
    )
    .await;
    // The request times out inside the batch's budget, so the plugin itself answers (es_connect)
    // instead of being interrupted at the deadline (plugin_timeout).
    wait_until("the event has failed two attempts", PATIENCE, async || {
        events(&db.pool, PROJECTION).await[0].attempts >= 2
    })
    .await;
    let row = &events(&db.pool, PROJECTION).await[0];
    assert_eq!(
        row.error_reason.as_deref(),
        Some("es_connect"),
        "{:?}",
        row.error
    );
    assert_ne!(row.status, "done");
    let durations = host.metric_sum(
        "projector_batch_duration_seconds_sum",
        &[("projection", PROJECTION)],
    );
    let batches = host.metric_sum(
        "projector_batch_duration_seconds_count",
        &[("projection", PROJECTION)],
    );
    assert!(batches >= 1.0);
    assert!(
        durations / batches < 3.0,
        "a batch took {}s on average with a 1.5s budget",
        durations / batches
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_importing_search_without_a_grant_is_refused_at_load() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "projector.toml",
        projection_toml("books-index", Some(INDEX), &[], ""),
    );
    let out = run_projector(
        &["run", "--config", config.to_str().unwrap()],
        &[
            ("DATABASE_URL", &db.url),
            ("ELASTIC_URL", "http://127.0.0.1:9"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`search`") && stderr.contains("`books-index`"),
        "stderr names the capability and the projection: {stderr}"
    );
    assert_eq!(
        db.public_tables().await,
        Vec::<String>::new(),
        "nothing touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_outside_the_grant_and_events_the_plugin_cannot_map_fail_without_being_sent() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    // `outside` writes to an index it was not granted; `unset` has no index at all.
    let toml = [
        projection_toml("outside", Some("secrets"), &["books-*"], ""),
        projection_toml("unset", None, &["books-*"], ""),
        projection_toml(PROJECTION, Some("books-main"), &["books-*"], ""),
    ]
    .join("\n");
    let on = |projection: &str, e: NewEvent| NewEvent {
        projection: projection.into(),
        ..e
    };
    insert_events(
        &db.pool,
        &[
            on(
                "outside",
                event("book", "created", "book-1", json!({"title": "x"})),
            ),
            on(
                "unset",
                event("book", "created", "book-1", json!({"title": "x"})),
            ),
            event("book", "created", "book-1", json!({"pages": 3})),
            event("chapter", "created", "chapter-1", json!({"title": "x"})),
            event("tag", "renamed", "tag-1", json!("not an object")),
            event("tag", "created", "tag-2", json!({"name": "ok"})),
        ],
    )
    .await;
    let _host = start_host(&db, &es.url, dir.path(), &toml, &[("ELASTIC_INDEX", "")]);
    for (projection, total) in [("outside", 1), ("unset", 1), (PROJECTION, 4)] {
        wait_settled(&db.pool, projection, total, PATIENCE).await;
    }
    let failed_with = |rows: &[EventRow], reason: &str| {
        for r in rows {
            assert_eq!(
                (
                    r.status.as_str(),
                    r.error_reason.as_deref(),
                    r.failure_kind.as_deref()
                ),
                ("failed", Some(reason), Some("deterministic")),
                "{} event {}: {:?}",
                r.projection,
                r.seq,
                r.error
            );
            assert_eq!(r.attempts, 1);
        }
    };
    let outside = events(&db.pool, "outside").await;
    failed_with(&outside, "es_forbidden");
    let error = outside[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("`secrets`") && error.contains("not granted"),
        "{error}"
    );
    failed_with(&events(&db.pool, "unset").await, "bad_config");
    let rows = events(&db.pool, PROJECTION).await;
    failed_with(&rows[..3], "bad_payload");
    assert_eq!(rows[3].status, "done");

    let (status, _) = es.request("GET", "/secrets", None);
    assert_eq!(
        status, 404,
        "nothing was written to the index outside the grant"
    );
    let docs = es.documents("books-main");
    assert_eq!(docs.keys().collect::<Vec<_>>(), ["tag-2"]);
}
