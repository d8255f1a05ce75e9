//! The query-cache projection (seeds 000/001): an HR system's position, assignment and job-level
//! events projected through the `sql` capability into the position read model the API answers
//! from, with a `query_cache_invalidate` notification per changed position. The read model equals
//! a fold of the events, redelivering them changes nothing, every committed change is announced
//! (after its commit, never for an event that failed), and an event that cannot apply fails alone.

use crate::common;
mod model;

use common::*;
use model::*;
use serde_json::{json, Value};
use sqlx::postgres::{PgListener, PgPool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::mpsc;
use uuid::Uuid;

const SCHEMA: &str = include_str!("../../examples/migrations/0002_query_cache.sql");
const PROJECTION: &str = "query-cache";
const CHANNEL: &str = "query_cache_invalidate";

async fn setup() -> TestDb {
    let db = TestDb::new().await;
    db.migrate();
    sqlx::raw_sql(SCHEMA)
        .execute(&db.pool)
        .await
        .expect("query-cache schema");
    db
}

fn config(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "query-cache.toml",
        format!(
            "[[projection]]\nname = \"{PROJECTION}\"\nplugin = \"{}\"\n\
             [projection.grants]\nsql_tables = [\"position_cache\", \"job_level_cache\"]\n",
            plugin("query_cache").display()
        ),
    )
}

/// Writes `events` to the outbox (in order) and returns their ids and seqs.
async fn write(db: &TestDb, events: &[Ev]) -> (Vec<Uuid>, Vec<i64>) {
    let rows: Vec<NewEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| e.to_outbox(i))
        .collect();
    let ids = insert_events(&db.pool, &rows).await;
    let stored = common::events(&db.pool, PROJECTION).await;
    assert_eq!(
        stored.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "seq follows the order written"
    );
    (ids, stored.iter().map(|r| r.seq).collect())
}

async fn read_model(pool: &PgPool) -> BTreeMap<Key, Row> {
    type Columns = (
        String,
        String,
        String,
        Option<String>,
        Option<i32>,
        Option<i32>,
        i32,
        Value,
        bool,
        i64,
        Option<String>,
    );
    let rows: Vec<Columns> = sqlx::query_as(
        "SELECT tenant_id, position_code, title, job_level_code, job_level_version,
                headcount_capacity, headcount_in_use, assignment_history,
                deleted_at IS NOT NULL, last_event_seq, last_request_id
         FROM position_cache",
    )
    .fetch_all(pool)
    .await
    .expect("read position_cache");
    rows.into_iter()
        .map(|c| {
            (
                (c.0, c.1),
                Row {
                    title: c.2,
                    job_level_code: c.3,
                    job_level_version: c.4,
                    headcount_capacity: c.5,
                    headcount_in_use: c.6,
                    assignment_history: c.7,
                    deleted: c.8,
                    last_event_seq: c.9,
                    last_request_id: c.10,
                },
            )
        })
        .collect()
}

async fn job_levels(pool: &PgPool) -> BTreeMap<Key, i32> {
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT tenant_id, job_level_code, version FROM job_level_cache")
            .fetch_all(pool)
            .await
            .expect("read job_level_cache");
    rows.into_iter().map(|(t, c, v)| ((t, c), v)).collect()
}

/// Both tables, every column (timestamps included), as one JSON value.
async fn snapshot(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'positions', (SELECT jsonb_agg(to_jsonb(p) ORDER BY tenant_id, position_code) FROM position_cache p),
            'levels', (SELECT jsonb_agg(to_jsonb(j) ORDER BY tenant_id, job_level_code) FROM job_level_cache j))",
    )
    .fetch_one(pool)
    .await
    .expect("snapshot")
}

/// Every event ended as the fold says: done, failed with its reason, or blocked.
async fn assert_outcomes(db: &TestDb, events: &[Ev], expect: &[Expect]) {
    let rows = common::events(&db.pool, PROJECTION).await;
    assert_eq!(rows.len(), expect.len());
    for (i, (row, want)) in rows.iter().zip(expect).enumerate() {
        let what = format!("event {i} {:?}: {row:?}", events[i]);
        match want {
            Expect::Applied(_) => assert_eq!(row.status, "done", "{what}"),
            Expect::Failed(reason) => {
                assert_eq!(row.status, "failed", "{what}");
                assert_eq!(row.error_reason.as_deref(), Some(*reason), "{what}");
                assert_eq!(row.failure_kind.as_deref(), Some("deterministic"), "{what}");
            }
            Expect::Blocked => {
                assert_eq!(
                    (row.status.as_str(), row.attempts),
                    ("pending", 0),
                    "{what}"
                )
            }
        }
    }
}

fn assert_read_model(actual: &BTreeMap<Key, Row>, expected: &BTreeMap<Key, Row>) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same positions"
    );
    for (k, want) in expected {
        assert_eq!(&actual[k], want, "position {k:?}");
    }
}

/// One notification on `query_cache_invalidate`, and which events were done when it arrived.
#[derive(Debug)]
struct Heard {
    payload: String,
    done_at_receipt: Vec<Uuid>,
}

/// LISTENs on the channel (before returning, so nothing committed later is missed) and forwards
/// every notification; with `probe`, also which events were done the moment it arrived.
async fn listen(db: &TestDb, probe: bool) -> mpsc::UnboundedReceiver<Heard> {
    let mut listener = PgListener::connect(&db.url)
        .await
        .expect("connect listener");
    listener.listen(CHANNEL).await.expect("LISTEN");
    let pool = db.pool.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(n) = listener.recv().await {
            let done_at_receipt = if probe {
                sqlx::query_scalar("SELECT id FROM outbox_events WHERE status = 'done'")
                    .fetch_all(&pool)
                    .await
                    .expect("done events")
            } else {
                Vec::new()
            };
            let heard = Heard {
                payload: n.payload().to_owned(),
                done_at_receipt,
            };
            if tx.send(heard).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends the marker `name` on the channel and returns everything heard before it: since
/// Postgres delivers notifications in commit order, that is everything committed so far.
async fn heard_until(
    db: &TestDb,
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    name: &str,
) -> Vec<Heard> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(name)
        .execute(&db.pool)
        .await
        .expect("NOTIFY marker");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut heard = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(h)) if h.payload == name => return heard,
            Ok(Some(h)) => heard.push(h),
            Ok(None) => panic!("the listener stopped"),
            Err(_) => panic!("marker {name} not heard after {PATIENCE:?}"),
        }
    }
}

fn notify_key(k: &Key) -> String {
    format!("{}:{}", k.0, k.1)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_model_equals_a_fold_of_the_events_and_redelivery_changes_nothing() {
    let started = Instant::now();
    let db = setup().await;
    let events = workload(0x5eed_0001, &["t-a", "t-b"], 10, 320, 280);
    let (_, seqs) = write(&db, &events).await;
    let spec = fold(&events, &seqs);
    assert!(
        spec.expect.iter().all(|e| matches!(e, Expect::Applied(_))),
        "a valid workload"
    );
    let mut heard = listen(&db, false).await;

    // Two hosts of two loops each share the work, so batches run in concurrent transactions
    // that contend for the same rows and job-level locks (each loop lends the plugin its own
    // transaction: sql_capability.rs shows two loops' batches overlapping in time, each in its
    // own transaction). A deadlock between a job-level fan-out and position changes is retried
    // (transient `sql_serialization`), so allow a few more attempts than FAST does.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let env = [("OUTBOX_CONCURRENCY", "2"), ("OUTBOX_MAX_ATTEMPTS", "10")];
    let mut hosts = [
        Host::start(&db.url, &["--config", config.to_str().unwrap()], &env),
        Host::start(&db.url, &["--config", config.to_str().unwrap()], &env),
    ];
    for host in &mut hosts {
        host.wait_ready(PATIENCE);
    }
    let counts = wait_settled(&db.pool, PROJECTION, events.len() as i64, PATIENCE).await;
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_outcomes(&db, &events, &spec.expect).await;

    let model = read_model(&db.pool).await;
    assert_eq!(model.len(), 20);
    assert!(
        model.values().any(|r| r.deleted) && model.values().any(|r| r.headcount_in_use > 1),
        "the workload deletes a position and fills several assignments of one"
    );
    assert_read_model(&model, &spec.positions);
    assert_eq!(job_levels(&db.pool).await, spec.levels);
    for (k, r) in &model {
        let open = r.assignment_history.as_array().unwrap();
        let open = open.iter().filter(|e| e["closedAt"].is_null()).count();
        assert_eq!(
            r.headcount_in_use as usize, open,
            "{k:?}: headcount = open assignments"
        );
    }
    let first = heard_until(&db, &mut heard, "marker-1").await;
    let announced: BTreeMap<&str, ()> = first.iter().map(|h| (h.payload.as_str(), ())).collect();
    let changed: Vec<String> = model.keys().map(notify_key).collect();
    assert_eq!(
        announced.keys().copied().collect::<Vec<_>>(),
        changed,
        "every position changed, every one announced"
    );
    let before = snapshot(&db.pool).await;

    // Deliver everything again, as a crashed-and-restarted dispatcher would.
    let reset = sqlx::query(
        "UPDATE outbox_events SET status = 'pending', attempts = 0, next_retry_at = now()
         WHERE projection = $1 AND status = 'done'",
    )
    .bind(PROJECTION)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(reset.rows_affected(), events.len() as u64);
    wait_until(
        "the redelivered events are done again",
        PATIENCE,
        async || status_counts(&db.pool, PROJECTION).await.done == events.len() as i64,
    )
    .await;
    assert_eq!(
        snapshot(&db.pool).await,
        before,
        "not a column changed, not even updated_at"
    );
    let again = heard_until(&db, &mut heard, "marker-2").await;
    assert!(
        again.is_empty(),
        "redelivery invalidates nothing: {:?}",
        again.iter().map(|h| &h.payload).collect::<Vec<_>>()
    );
    // The counters move just after the commit the test saw: wait for them.
    wait_until(
        "the hosts counted every delivery, twice",
        PATIENCE,
        async || {
            let delivered: f64 = hosts
                .iter()
                .map(|h| {
                    h.metric_sum(
                        "outbox_dispatch_success_total",
                        &[("projection", PROJECTION)],
                    )
                })
                .sum();
            delivered == 2.0 * events.len() as f64
        },
    )
    .await;
    let retries = hosts
        .iter()
        .map(|h| {
            h.metric_sum(
                "outbox_retry_scheduled_total",
                &[("projection", PROJECTION)],
            )
        })
        .sum::<f64>() as u64;
    eprintln!(
        "fold and redelivery of {} events over two hosts ({retries} retries): {:?}",
        events.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_committed_change_is_announced_once_its_transaction_has_committed() {
    let started = Instant::now();
    let db = setup().await;
    let mut events = workload(0x5eed_0002, &["t-a", "t-b"], 3, 70, 50);
    // No-ops and a refusal: nothing to announce for them.
    let (refill_at, refill) = events
        .iter()
        .find_map(|e| match e {
            Ev::Filled { at, assignment, .. } => Some((at.clone(), assignment.clone())),
            _ => None,
        })
        .unwrap();
    let deleted = events
        .iter()
        .find_map(|e| match e {
            Ev::Deleted { at } => Some(at.clone()),
            _ => None,
        })
        .unwrap();
    events.push(Ev::Filled {
        at: refill_at,
        assignment: refill,
        employee: "E-again".into(),
    });
    events.push(Ev::Deleted { at: deleted });
    events.push(Ev::Broken {
        event_type: "position.updated",
        payload: json!({"tenantId": "t-a", "occurredAt": "2025-11-08T10:00:00+08:00",
                        "positionCode": "P1000", "headcount": "three"}),
        reason: "bad_payload",
    });
    let (ids, seqs) = write(&db, &events).await;
    let spec = fold(&events, &seqs);
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for e in &spec.expect {
        if let Expect::Applied(keys) = e {
            for k in keys {
                *expected.entry(notify_key(k)).or_default() += 1;
            }
        }
    }
    let level_fanout = spec.expect.iter().zip(&events).any(
        |(e, ev)| matches!((e, ev), (Expect::Applied(k), Ev::LevelVersion { .. }) if k.len() > 1),
    );
    assert!(
        level_fanout,
        "some job-level version changes several positions"
    );
    let mut heard = listen(&db, true).await;

    // One event per batch, one batch at a time: one transaction per event, so Postgres folds
    // no two notifications of a key into one, and the expected count is exact.
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", config(dir.path()).to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "1"), ("OUTBOX_CONCURRENCY", "1")],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, PROJECTION, events.len() as i64, PATIENCE).await;
    assert_outcomes(&db, &events, &spec.expect).await;
    assert_read_model(&read_model(&db.pool).await, &spec.positions);
    let heard = heard_until(&db, &mut heard, "marker").await;

    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for h in &heard {
        *counted.entry(h.payload.clone()).or_default() += 1;
    }
    assert_eq!(
        counted, expected,
        "one notification per applied change of each position"
    );
    // Only after commit: when the n-th notification of a key arrives, at least n changes of that
    // key are already visible as done (the done mark commits with the change and its NOTIFY).
    let announced = |id: &Uuid, k: &str| {
        let i = ids.iter().position(|x| x == id).unwrap();
        match &spec.expect[i] {
            Expect::Applied(keys) => keys.iter().filter(|x| notify_key(x) == k).count(),
            _ => 0,
        }
    };
    let mut nth: BTreeMap<&str, usize> = BTreeMap::new();
    for h in &heard {
        let n = nth.entry(h.payload.as_str()).or_default();
        *n += 1;
        let committed: usize = h
            .done_at_receipt
            .iter()
            .map(|id| announced(id, &h.payload))
            .sum();
        assert!(
            committed >= *n,
            "notification {n} of {} arrived when only {committed} of its changes were committed",
            h.payload
        );
    }
    drop(host);
    eprintln!(
        "{} notifications for {} events: {:?}",
        heard.len(),
        events.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_an_unknown_assignment_fails_alone_and_bad_payloads_are_refused() {
    let db = setup().await;
    let (a1, a2, b1) = (key("t-a", "P1"), key("t-a", "P2"), key("t-b", "P1"));
    let filled = |at: &Key, id: &str| Ev::Filled {
        at: at.clone(),
        assignment: id.into(),
        employee: format!("E-{id}"),
    };
    let closed = |at: &Key, id: &str| Ev::Closed {
        at: at.clone(),
        assignment: id.into(),
    };
    let created = |at: &Key| Ev::Created {
        at: at.clone(),
        title: format!("{} {}", at.0, at.1),
        level: Some("L1".into()),
        headcount: Some(2),
    };
    let broken = |event_type, payload: Value| Ev::Broken {
        event_type,
        payload,
        reason: "bad_payload",
    };
    let events = vec![
        created(&a1),
        created(&a2),
        created(&b1),
        filled(&a1, "X1"),
        filled(&a2, "X2"),
        // X2 was filled on P2, not P1; Z9 never at all.
        closed(&a1, "X2"),
        filled(&a1, "X3"), // blocked behind the failure on its position
        closed(&a2, "X2"),
        closed(&b1, "Z9"),
        filled(&a2, "X4"),
        Ev::LevelVersion {
            level: key("t-a", "L1"),
            version: 2,
        },
        filled(&key("t-a", "P404"), "X5"),
        broken(
            "position.created",
            json!({"tenantId": "t-a", "occurredAt": "2025-11-08T10:00:00Z", "positionCode": "P7"}),
        ),
        broken(
            "assignment.filled",
            json!({"occurredAt": "2025-11-08T10:00:00Z", "positionCode": "P1",
                   "assignmentId": "X6", "employeeId": "E1"}),
        ),
        broken(
            "position.updated",
            json!({"tenantId": "t-a", "occurredAt": "2025-11-08T10:00:00Z", "positionCode": "P2"}),
        ),
        broken(
            "position.created",
            json!({"tenantId": "t-a", "occurredAt": "not a time", "positionCode": "P8", "title": "T"}),
        ),
        broken(
            "jobLevel.versionCreated",
            json!({"tenantId": "t-a", "occurredAt": "2025-11-08T10:00:00Z",
                   "jobLevelCode": "L1", "version": 0}),
        ),
        Ev::Broken {
            event_type: "position.archived",
            payload: json!({"tenantId": "t-a", "occurredAt": "2025-11-08T10:00:00Z",
                            "positionCode": "P1"}),
            reason: "unknown_event_type",
        },
    ];
    let (_, seqs) = write(&db, &events).await;
    let spec = fold(&events, &seqs);
    assert_eq!(spec.expect[5], Expect::Failed("unknown_assignment"));
    assert_eq!(spec.expect[6], Expect::Blocked);
    assert_eq!(spec.expect[8], Expect::Failed("unknown_assignment"));
    assert_eq!(spec.expect[11], Expect::Failed("unknown_position"));
    let settled = spec
        .expect
        .iter()
        .filter(|e| **e != Expect::Blocked)
        .count() as i64;

    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", config(dir.path()).to_str().unwrap()],
        &[("OUTBOX_CONCURRENCY", "1")],
    );
    host.wait_ready(PATIENCE);
    wait_until(
        "every event but the blocked one settled",
        PATIENCE,
        async || {
            let c = status_counts(&db.pool, PROJECTION).await;
            c.done + c.failed == settled && c.processing == 0
        },
    )
    .await;
    assert_outcomes(&db, &events, &spec.expect).await;
    let model = read_model(&db.pool).await;
    assert_read_model(&model, &spec.positions);
    assert_eq!(model[&a2].headcount_in_use, 1, "X2 closed, X4 open");
    assert_eq!(model[&a2].job_level_version, Some(2));
    assert_eq!(
        model[&a1].assignment_history,
        json!([{"assignmentId": "X1", "employeeId": "E-X1", "filledAt": utc_text(3), "closedAt": null}]),
        "the failed close left no trace, the blocked fill is not applied"
    );
    wait_until("the blocked event is counted", PATIENCE, async || {
        host.metric("outbox_blocked_events", &[("projection", PROJECTION)]) == Some(1.0)
    })
    .await;
}
