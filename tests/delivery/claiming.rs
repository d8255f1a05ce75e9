//! Claim-level invariants, driven through the library's own claim/settle/lease statements on a
//! real Postgres: fencing of late acks, reclaim of expired leases, and per-aggregate ordering
//! between concurrent claimers.

use crate::common;

use common::*;
use projector_service::settings::{Ordering, ProjectionSpec, Tuning};
use projector_store::outbox::{claim::claim, lease, settle::settle, Verdict};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn spec(projection: &str, ordering: Ordering) -> ProjectionSpec {
    ProjectionSpec {
        name: projection.to_owned(),
        plugin: PathBuf::from("unused.wasm"),
        ordering,
        tuning: Tuning {
            concurrency: 1,
            batch_size: 100,
            events_per_aggregate: 1,
            lease: Duration::from_secs(30),
            max_processing: Duration::from_secs(60),
            max_attempts: 5,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_payload_bytes: 1 << 20,
            batch_max_bytes: 4 << 20,
            unknown_event_types: Default::default(),
        },
        config: BTreeMap::new(),
        grants: Default::default(),
        memory_limit: projector_core::spec::DEFAULT_MEMORY_BYTES,
        sources: BTreeMap::new(),
    }
}

fn success() -> serde_json::Value {
    json!({"outcome": "success"})
}

/// Moves `projection`'s clock past the leases of its claims: the rows' leases and the in-flight
/// marks the claims left on their heads (`claimed_until`, which a claim sets to the same end).
async fn expire_lease(pool: &sqlx::PgPool, projection: &str) {
    sqlx::raw_sql(&format!(
        "UPDATE outbox_events SET lease_expires_at = now() - interval '1 second'
         WHERE projection = '{projection}' AND status = 'processing';
         UPDATE outbox_heads SET claimed_until = now() - interval '1 second'
         WHERE projection = '{projection}' AND claimed_until > now();"
    ))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn late_ack_of_a_reclaimed_claim_changes_nothing() {
    let db = TestDb::new().await;
    db.migrate();
    let p = spec("fenced", Ordering::Aggregate);
    let events: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent::new("fenced", format!("agg-{i}"), success()))
        .collect();
    insert_events(&db.pool, &events).await;

    // Worker A claims, then stalls past its lease (GC pause, SIGSTOP, slow plugin): the lease
    // of its rows and the in-flight marks its claim left on their heads (which end with it).
    let a = claim(&db.pool, &p, "worker-a").await.unwrap();
    assert_eq!(a.events.len(), 3);
    expire_lease(&db.pool, "fenced").await;

    // Worker B reclaims the stuck rows: a new fencing token, the attempt counted again.
    let b = claim(&db.pool, &p, "worker-b").await.unwrap();
    assert_eq!(b.events.len(), 3);
    assert!(
        b.events.iter().all(|e| e.reclaimed && e.attempt == 2),
        "{:?}",
        b.events
    );
    assert_ne!(a.batch_id, b.batch_id);

    // A wakes up and acks with its stale claim: nothing changes, not even the lease.
    let failing = vec![
        Verdict::Deterministic {
            reason: "late".into(),
            message: "stale".into()
        };
        3
    ];
    let late = settle(&db.pool, &a, &failing, &p.tuning, "v-a")
        .await
        .unwrap();
    assert!(
        late.is_empty(),
        "a fenced-off ack settles nothing: {late:?}"
    );
    assert_eq!(
        lease::renew(
            &db.pool,
            a.batch_id,
            &a.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            p.tuning.lease
        )
        .await
        .unwrap(),
        0
    );
    let rows = common::events(&db.pool, "fenced").await;
    assert!(rows.iter().all(|r| r.status == "processing"
        && r.claimed_by.as_deref() == Some("worker-b")
        && r.claim_batch_id == Some(b.batch_id)
        && r.error_reason.is_none()));

    // B's ack lands.
    let ok = settle(
        &db.pool,
        &b,
        &[Verdict::Success, Verdict::Success, Verdict::Success],
        &p.tuning,
        "v-b",
    )
    .await
    .unwrap();
    assert_eq!(ok.len(), 3);
    // And A acking again after B finished still changes nothing.
    assert!(settle(&db.pool, &a, &failing, &p.tuning, "v-a")
        .await
        .unwrap()
        .is_empty());
    let rows = common::events(&db.pool, "fenced").await;
    for r in &rows {
        assert_eq!(r.status, "done");
        assert_eq!(r.projection_version.as_deref(), Some("v-b"));
        assert_eq!(r.claimed_by.as_deref(), Some("worker-b"));
        assert_eq!(r.attempts, 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregate_has_at_most_one_event_in_flight_and_a_failure_blocks_the_rest() {
    let db = TestDb::new().await;
    db.migrate();
    let p = spec("ordered", Ordering::Aggregate);
    // Three events of aggregate X interleaved with two of Y.
    let events = vec![
        NewEvent::new("ordered", "X", success()),
        NewEvent::new("ordered", "Y", success()),
        NewEvent::new("ordered", "X", success()),
        NewEvent::new("ordered", "Y", success()),
        NewEvent::new("ordered", "X", success()),
    ];
    let ids = insert_events(&db.pool, &events).await;

    let first = claim(&db.pool, &p, "w1").await.unwrap();
    let claimed: Vec<_> = first.events.iter().map(|e| e.id).collect();
    assert_eq!(
        claimed,
        vec![ids[0], ids[1]],
        "only the head of each aggregate"
    );
    // A concurrent claimer finds nothing: every aggregate's head is in flight.
    assert!(claim(&db.pool, &p, "w2").await.unwrap().events.is_empty());

    // X's head fails terminally, Y's succeeds.
    let verdicts = vec![
        Verdict::Deterministic {
            reason: "bad_payload".into(),
            message: "no".into(),
        },
        Verdict::Success,
    ];
    settle(&db.pool, &first, &verdicts, &p.tuning, "v")
        .await
        .unwrap();
    let second = claim(&db.pool, &p, "w2").await.unwrap();
    let claimed: Vec<_> = second.events.iter().map(|e| e.id).collect();
    assert_eq!(
        claimed,
        vec![ids[3]],
        "Y continues; X is blocked behind its failed event"
    );
    settle(&db.pool, &second, &[Verdict::Success], &p.tuning, "v")
        .await
        .unwrap();
    assert!(claim(&db.pool, &p, "w1").await.unwrap().events.is_empty());

    // With ordering = "none" the blocked events are claimable.
    let unordered = claim(&db.pool, &spec("ordered", Ordering::None), "w3")
        .await
        .unwrap();
    let claimed: Vec<_> = unordered.events.iter().map(|e| e.id).collect();
    assert_eq!(claimed, vec![ids[2], ids[4]]);
}

/// The seqs of a claim, in the order the claim returned them (seq order).
fn seqs(c: &projector_store::outbox::Claim) -> Vec<i64> {
    c.events.iter().map(|e| e.seq).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_ends_at_its_byte_bound_and_always_carries_its_first_event() {
    let db = TestDb::new().await;
    db.migrate();
    // Five events of one payload size: X, Y, X, Y, X. The bound is measured, not assumed: the
    // payload as the claim reads it (jsonb as text).
    let padded = json!({"outcome": "success", "pad": "p".repeat(1000)});
    for projection in ["bytes_ordered", "bytes_unordered"] {
        let events: Vec<NewEvent> = ["X", "Y", "X", "Y", "X"]
            .iter()
            .map(|a| NewEvent::new(projection, *a, padded.clone()))
            .collect();
        insert_events(&db.pool, &events).await;
    }
    let size: i64 = sqlx::query_scalar(
        "SELECT max(octet_length(payload::text))::int8 FROM outbox_events
         WHERE projection = 'bytes_ordered' HAVING min(octet_length(payload::text)) = max(octet_length(payload::text))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(size > 1000, "{size}");
    let all: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox_events WHERE projection = 'bytes_ordered' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let bounded = |projection: &str, ordering, bytes: i64| {
        let mut p = spec(projection, ordering);
        p.tuning.events_per_aggregate = 3;
        p.tuning.batch_max_bytes = bytes as usize;
        p
    };
    // Ordered, runs of up to 3: X's three events and Y's two fit in one batch without a bound
    // (the control), and two and a half payloads' worth cut X's run after its second event.
    let roomy = bounded("bytes_ordered", Ordering::Aggregate, 5 * size);
    let whole = claim(&db.pool, &roomy, "w").await.unwrap();
    assert_eq!(seqs(&whole), all, "a bound of five payloads holds all five");
    settle(
        &db.pool,
        &whole,
        &vec![Verdict::Deferred; 5],
        &roomy.tuning,
        "v",
    )
    .await
    .unwrap();
    let tight = bounded("bytes_ordered", Ordering::Aggregate, 2 * size + size / 2);
    let first = claim(&db.pool, &tight, "w").await.unwrap();
    assert_eq!(
        seqs(&first),
        [all[0], all[2]],
        "the walk's first head (X) gives the prefix of its run that fits"
    );
    // Y was cut off whole: its head is not marked in flight, and the next claim takes it (X's
    // third event waits for the two before it).
    let second = claim(&db.pool, &tight, "w").await.unwrap();
    assert_eq!(seqs(&second), [all[1], all[3]]);
    assert!(claim(&db.pool, &tight, "w")
        .await
        .unwrap()
        .events
        .is_empty());
    settle(
        &db.pool,
        &first,
        &[Verdict::Success, Verdict::Success],
        &tight.tuning,
        "v",
    )
    .await
    .unwrap();
    // A bound smaller than one payload still lets the first event go, and only it.
    let one = bounded("bytes_ordered", Ordering::Aggregate, 1);
    assert_eq!(seqs(&claim(&db.pool, &one, "w").await.unwrap()), [all[4]]);

    // Unordered: the oldest events while they fit, the same rules.
    let unordered: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox_events WHERE projection = 'bytes_unordered' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let one = bounded("bytes_unordered", Ordering::None, 1);
    assert_eq!(
        seqs(&claim(&db.pool, &one, "w").await.unwrap()),
        [unordered[0]]
    );
    let tight = bounded("bytes_unordered", Ordering::None, 2 * size + size / 2);
    assert_eq!(
        seqs(&claim(&db.pool, &tight, "w").await.unwrap()),
        [unordered[1], unordered[2]]
    );
    let roomy = bounded("bytes_unordered", Ordering::None, 5 * size);
    assert_eq!(
        seqs(&claim(&db.pool, &roomy, "w").await.unwrap()),
        [unordered[3], unordered[4]],
        "the events past a batch's end were left pending, not held"
    );
    let rows = common::events(&db.pool, "bytes_unordered").await;
    assert!(rows
        .iter()
        .all(|r| r.status == "processing" && r.attempts == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_come_back_after_their_backoff_and_exhaust_into_failed() {
    let db = TestDb::new().await;
    db.migrate();
    let mut p = spec("retry", Ordering::Aggregate);
    p.tuning.max_attempts = 2;
    p.tuning.base_backoff = Duration::from_millis(300);
    p.tuning.max_backoff = Duration::from_millis(300);
    insert_events(&db.pool, &[NewEvent::new("retry", "A", success())]).await;

    let c1 = claim(&db.pool, &p, "w").await.unwrap();
    let s = settle(
        &db.pool,
        &c1,
        &[Verdict::transient("es_connect", "down")],
        &p.tuning,
        "v",
    )
    .await
    .unwrap();
    assert_eq!(s[0].status, "pending");
    let delay = s[0].retry_in.expect("a retry delay").as_secs_f64();
    assert!(
        (delay - 0.3).abs() < 0.001,
        "base = max = 300ms leaves no room for jitter: {delay}"
    );
    // Not due yet.
    assert!(claim(&db.pool, &p, "w").await.unwrap().events.is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c2 = claim(&db.pool, &p, "w").await.unwrap();
    assert_eq!(c2.events.len(), 1);
    assert_eq!(c2.events[0].attempt, 2);
    let s = settle(
        &db.pool,
        &c2,
        &[Verdict::transient("es_connect", "still down")],
        &p.tuning,
        "v",
    )
    .await
    .unwrap();
    assert_eq!(s[0].status, "failed");
    let row = &common::events(&db.pool, "retry").await[0];
    assert_eq!(row.failure_kind.as_deref(), Some("attempts_exhausted"));
    assert_eq!(row.error_reason.as_deref(), Some("es_connect"));
    assert_eq!(row.error.as_deref(), Some("still down"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stuck_rows_on_their_last_attempt_are_failed_by_the_sweep_and_released_rows_give_the_attempt_back(
) {
    let db = TestDb::new().await;
    db.migrate();
    let mut p = spec("stuck", Ordering::None);
    p.tuning.max_attempts = 1;
    insert_events(
        &db.pool,
        &[
            NewEvent::new("stuck", "A", success()),
            NewEvent::new("stuck", "B", success()),
        ],
    )
    .await;

    let c = claim(&db.pool, &p, "w").await.unwrap();
    assert_eq!(c.events.len(), 2);
    sqlx::query("UPDATE outbox_events SET lease_expires_at = now() - interval '1 second' WHERE aggregate_id = 'A'")
        .execute(&db.pool)
        .await
        .unwrap();
    // The expired row used its only attempt: the claim leaves it, the sweep fails it.
    assert!(claim(&db.pool, &p, "other")
        .await
        .unwrap()
        .events
        .is_empty());
    let swept = lease::sweep_exhausted(&db.pool, &p).await.unwrap();
    assert_eq!(swept, vec![c.events[0].seq]);
    // The live one is released at shutdown: pending again, attempt given back, claimable.
    assert_eq!(lease::release(&db.pool, "w", None).await.unwrap(), 1);
    let rows = common::events(&db.pool, "stuck").await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].error_reason.as_deref()),
        ("failed", Some("lease_expired"))
    );
    assert_eq!(
        (
            rows[1].status.as_str(),
            rows[1].attempts,
            rows[1].claim_batch_id
        ),
        ("pending", 0, None)
    );
    assert_eq!(claim(&db.pool, &p, "other").await.unwrap().events.len(), 1);
}

/// How many heads `projection` has for `aggregate` (0 or 1).
async fn heads_of(pool: &sqlx::PgPool, projection: &str, aggregate: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_heads WHERE projection = $1 AND aggregate_id = $2",
    )
    .bind(projection)
    .bind(aggregate)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_follow_the_settle_and_the_sweep_removes_the_ones_left_empty() {
    use projector_store::outbox::heads::sweep_empty;
    let db = TestDb::new().await;
    db.migrate();
    let p = spec("heads", Ordering::Aggregate);
    insert_events(
        &db.pool,
        &[
            NewEvent::new("heads", "settled", success()),
            NewEvent::new("heads", "by-hand", success()),
            NewEvent::new("heads", "by-hand", success()),
            NewEvent::new("heads", "waiting", success()),
        ],
    )
    .await;
    for aggregate in ["settled", "by-hand", "waiting"] {
        assert_eq!(
            heads_of(&db.pool, "heads", aggregate).await,
            1,
            "{aggregate}: inserted, so it has a head"
        );
    }

    // A settle that finishes an aggregate's last event removes its head.
    let c = claim(&db.pool, &p, "w").await.unwrap();
    let settled: Vec<_> = c.events.iter().map(|e| e.aggregate_id.clone()).collect();
    assert!(settled.contains(&"settled".to_owned()), "{settled:?}");
    let verdicts: Vec<Verdict> = c
        .events
        .iter()
        .map(|e| match e.aggregate_id.as_str() {
            "waiting" => Verdict::transient("es_connect", "down"),
            _ => Verdict::Success,
        })
        .collect();
    settle(&db.pool, &c, &verdicts, &p.tuning, "v")
        .await
        .unwrap();
    assert_eq!(
        heads_of(&db.pool, "heads", "settled").await,
        0,
        "its only event is done"
    );
    assert_eq!(
        heads_of(&db.pool, "heads", "by-hand").await,
        1,
        "one of its two events is left"
    );
    assert_eq!(
        heads_of(&db.pool, "heads", "waiting").await,
        1,
        "its event waits for a retry"
    );

    // Finished other than by a settle (by hand here; an operator skip or a rebuild's supersede
    // alike): the head is left behind, and the sweep removes it, but not one with an event left.
    sqlx::query(
        "UPDATE outbox_events SET status = 'done', done_at = now() WHERE aggregate_id = 'by-hand'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        heads_of(&db.pool, "heads", "by-hand").await,
        1,
        "control: left behind before the sweep"
    );
    let removed = sweep_empty(&db.pool, "heads", 1000).await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(heads_of(&db.pool, "heads", "by-hand").await, 0);
    assert_eq!(
        heads_of(&db.pool, "heads", "waiting").await,
        1,
        "an aggregate with an unfinished event keeps its head"
    );

    // Made unfinished again by hand: the head comes back, and the claim finds the event.
    sqlx::query("UPDATE outbox_events SET status = 'pending', attempts = 0, next_retry_at = now() WHERE aggregate_id = 'settled'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(heads_of(&db.pool, "heads", "settled").await, 1);
    let again = claim(&db.pool, &p, "w").await.unwrap();
    assert!(
        again.events.iter().any(|e| e.aggregate_id == "settled"),
        "{:?}",
        again.events
    );
}

/// How many of `projection`'s heads are marked in flight (`claimed_until` in the future), by
/// aggregate.
async fn marked_heads(pool: &sqlx::PgPool, projection: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM outbox_heads
         WHERE projection = $1 AND claimed_until > now() ORDER BY aggregate_id",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn aggregates(c: &projector_store::outbox::Claim) -> Vec<&str> {
    let mut a: Vec<&str> = c.events.iter().map(|e| e.aggregate_id.as_str()).collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_in_flight_are_passed_over_and_shown_again_when_their_events_leave_processing() {
    let db = TestDb::new().await;
    db.migrate();
    let mut p = spec("marks", Ordering::Aggregate);
    // Retries due at once, so that only the marks could hold an aggregate back.
    p.tuning.base_backoff = Duration::ZERO;
    p.tuning.max_backoff = Duration::ZERO;
    let names = ["done", "retried", "failed", "cut", "released", "inserted"];
    let events: Vec<NewEvent> = (0..3)
        .flat_map(|_| names.map(|name| NewEvent::new("marks", name, success())))
        .collect();
    insert_events(&db.pool, &events).await;
    let mut runs = p.clone();
    runs.tuning.events_per_aggregate = 2;

    // One claim takes a run of two events of every aggregate and marks their heads; the next
    // claim finds nothing.
    let c = claim(&db.pool, &runs, "w").await.unwrap();
    assert_eq!(c.events.len(), 12, "{:?}", aggregates(&c));
    assert_eq!(marked_heads(&db.pool, "marks").await.len(), names.len());
    assert!(claim(&db.pool, &p, "other")
        .await
        .unwrap()
        .events
        .is_empty());

    // An insert into an aggregate in flight shows its head (the insert may hold it while a
    // settle runs); the claim still finds the aggregate's first event in flight and takes none.
    insert_events(&db.pool, &[NewEvent::new("marks", "inserted", success())]).await;
    assert!(!marked_heads(&db.pool, "marks")
        .await
        .contains(&"inserted".to_owned()));
    assert!(claim(&db.pool, &p, "other")
        .await
        .unwrap()
        .events
        .is_empty());

    // The settle: a run done, a transient failure due now (the run's second event handed back),
    // a deterministic failure, and a run cut after its first event. `released` and `inserted`
    // are not settled here.
    let claimed: BTreeMap<String, Vec<i64>> = c.events.iter().fold(BTreeMap::new(), |mut m, e| {
        m.entry(e.aggregate_id.clone()).or_default().push(e.seq);
        m
    });
    let settled_part = projector_store::outbox::Claim {
        batch_id: c.batch_id,
        projection: c.projection.clone(),
        events: c
            .events
            .iter()
            .filter(|e| e.aggregate_id != "released" && e.aggregate_id != "inserted")
            .cloned()
            .collect(),
    };
    let mut verdicts: Vec<Verdict> = settled_part
        .events
        .iter()
        .map(|e| match e.aggregate_id.as_str() {
            "retried" => Verdict::transient("es_connect", "down"),
            "failed" => Verdict::Deterministic {
                reason: "bad".into(),
                message: "bad event".into(),
            },
            "cut" if e.seq == claimed["cut"][1] => Verdict::transient("es_connect", "down"),
            _ => Verdict::Success,
        })
        .collect();
    projector_store::outbox::defer_after_failures(&settled_part.events, &mut verdicts);
    settle(&db.pool, &settled_part, &verdicts, &p.tuning, "v")
        .await
        .unwrap();
    assert_eq!(
        marked_heads(&db.pool, "marks").await,
        vec!["released".to_owned()],
        "only the aggregates still in flight keep their marks (inserted's was shown by its insert)"
    );
    // The release at shutdown of the worker's rows still held shows the last one.
    assert_eq!(lease::release(&db.pool, "w", None).await.unwrap(), 4);
    assert!(marked_heads(&db.pool, "marks").await.is_empty());

    // Every aggregate goes on at once but the failed one, which blocks its own, each from its
    // earliest unfinished event.
    let next = claim(&db.pool, &p, "w").await.unwrap();
    assert_eq!(
        aggregates(&next),
        vec!["cut", "done", "inserted", "released", "retried"],
        "{:?}",
        next.events
    );
    for e in &next.events {
        let run = &claimed[&e.aggregate_id];
        let expected = match e.aggregate_id.as_str() {
            "done" => e.seq > run[1],
            "cut" => e.seq == run[1],
            _ => e.seq == run[0],
        };
        assert!(
            expected,
            "{} got seq {}; first claim: {claimed:?}",
            e.aggregate_id, e.seq
        );
    }

    // A host that dies holding a claim leaves its marks behind; they end with its lease, and
    // the run is reclaimed as before.
    assert!(claim(&db.pool, &p, "other")
        .await
        .unwrap()
        .events
        .is_empty());
    expire_lease(&db.pool, "marks").await;
    let reclaimed = claim(&db.pool, &p, "other").await.unwrap();
    assert_eq!(aggregates(&reclaimed), aggregates(&next));
    assert!(reclaimed.events.iter().all(|e| e.reclaimed));
}

async fn setting(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_claims_transaction_commits_without_waiting_for_its_flush() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    db.migrate();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(
        setting(&mut conn).await,
        "on",
        "control: the server's default"
    );
    let mut tx = conn.begin().await.unwrap();
    projector_store::outbox::claim::take_turn(&mut *tx, "p")
        .await
        .unwrap();
    assert_eq!(setting(&mut *tx).await, "off", "the claim's transaction");
    tx.commit().await.unwrap();
    // The settle that follows on the same pooled connection waits for its flush again: an
    // outcome is never lost to a crash, only a claim (which is then reclaimed).
    assert_eq!(setting(&mut conn).await, "on", "after the claim committed");
}

/// The ordered claim statement alone, without its turn: what two hosts ran before migration 0011.
async fn claim_without_turn(
    conn: &mut sqlx::PgConnection,
    p: &ProjectionSpec,
    worker: &str,
) -> Vec<i64> {
    use projector_store::outbox::claim::{bound_statement, CLAIM_ORDERED_SQL};
    let rows: Vec<(i64,)> = bound_statement(CLAIM_ORDERED_SQL, p, worker, uuid::Uuid::new_v4())
        .fetch_all(conn)
        .await
        .unwrap();
    rows.into_iter().map(|(seq,)| seq).collect()
}

/// A migrated database with `n` pending events of ordered projection `projection`, one per
/// aggregate.
async fn one_event_per_aggregate(projection: &str, n: usize) -> (TestDb, ProjectionSpec) {
    let db = TestDb::new().await;
    db.migrate();
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new(projection, format!("agg-{i}"), success()))
        .collect();
    insert_events(&db.pool, &events).await;
    (db, spec(projection, Ordering::Aggregate))
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_claims_take_turns_so_the_second_gets_the_next_events_not_none() {
    use projector_store::outbox::claim::claim_on;
    let (db, p) = one_event_per_aggregate("turns", 200).await;

    // Positive control, the race as it was: host A's claim has run but not committed when host
    // B's starts. B sees the same 100 oldest candidates, A holds every one of them, and B comes
    // back with nothing although 100 more events are due.
    let mut a = db.pool.begin().await.unwrap();
    assert_eq!(claim_without_turn(&mut a, &p, "a").await.len(), 100);
    let mut b = db.pool.acquire().await.unwrap();
    let collided = claim_without_turn(&mut b, &p, "b").await;
    assert!(
        collided.is_empty(),
        "without turns the second claim collides: {collided:?}"
    );
    a.rollback().await.unwrap();

    // With turns: B waits for A's commit, then walks past what A took.
    let mut a = db.pool.begin().await.unwrap();
    let first = claim_on(&mut a, &p, "a").await.unwrap();
    assert_eq!(first.events.len(), 100);
    let pool = db.pool.clone();
    let spec_b = p.clone();
    let second = tokio::spawn(async move { claim(&pool, &spec_b, "b").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "B's claim waits while A holds the turn"
    );
    a.commit().await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(second.events.len(), 100, "B got the next 100 events");
    let mut seqs: Vec<i64> = first
        .events
        .iter()
        .chain(&second.events)
        .map(|e| e.seq)
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 200, "A and B hold different events");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT claim_batch_id) FROM outbox_events
         WHERE projection = 'turns' AND status = 'processing'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(held, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimer_stalled_while_holding_the_turn_is_ended_and_the_others_claim() {
    use projector_store::outbox::claim::{claim_on, CLAIM_TURN_IDLE_LIMIT};
    let (db, p) = one_event_per_aggregate("stalled", 10).await;

    // Host A claimed and froze before its COMMIT (SIGSTOP between two round trips).
    let mut a = db.pool.begin().await.unwrap();
    assert_eq!(claim_on(&mut a, &p, "a").await.unwrap().events.len(), 10);
    let started = std::time::Instant::now();
    let b = tokio::time::timeout(
        CLAIM_TURN_IDLE_LIMIT + Duration::from_secs(30),
        claim(&db.pool, &p, "b"),
    )
    .await
    .expect("B's claim waits no longer than A's turn may sit idle")
    .unwrap();
    let waited = started.elapsed();
    // The server ended A's session, which rolled A's claim back: B claims all ten.
    assert_eq!(b.events.len(), 10, "{b:?}");
    assert!(
        waited >= CLAIM_TURN_IDLE_LIMIT - Duration::from_millis(500),
        "B waited for A's turn to end ({waited:?})"
    );
    assert!(
        sqlx::query("SELECT 1").execute(&mut *a).await.is_err(),
        "A's session was ended"
    );
    assert!(b.events.iter().all(|e| e.attempt == 1 && !e.reclaimed));
}
