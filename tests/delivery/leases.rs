//! Leases: a host renews the lease on a batch it is still working on; when a host stops (frozen
//! with its claims held), another host that is already running takes its claims over only after
//! the lease has expired; and two hosts never work on one event at the same time.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_hosts_claims_are_taken_over_by_a_running_host_only_after_their_lease_expires() {
    let db = TestDb::new().await;
    db.migrate();
    // Three slow events: one plugin call takes 9 s, far longer than the 2 s lease.
    let ids = insert_events(
        &db.pool,
        &(0..3)
            .map(|i| {
                NewEvent::new(
                    "p",
                    format!("agg-{i}"),
                    json!({"outcome": "success", "sleep_ms": 3000, "log": true}),
                )
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let spec = plugin_spec("p", &plugin("scripted"));
    let settings = |worker| {
        vec![
            ("OUTBOX_WORKER_ID", worker),
            ("OUTBOX_LEASE_SECONDS", "2"),
            ("OUTBOX_BATCH_SIZE", "10"),
            ("OUTBOX_CONCURRENCY", "1"),
        ]
    };

    let mut a = Host::start(&db.url, &["--plugin", &spec], &settings("host-a"));
    a.wait_ready(PATIENCE);
    let claimed_by_a = |rows: &[EventRow]| {
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r.status == "processing" && r.claimed_by.as_deref() == Some("host-a"))
    };
    wait_until("host A holds all three events", PATIENCE, async || {
        claimed_by_a(&events(&db.pool, "p").await)
    })
    .await;
    let claimed = events(&db.pool, "p").await;
    let batch_id = claimed[0].claim_batch_id;
    assert!(batch_id.is_some() && claimed.iter().all(|r| r.claim_batch_id == batch_id));
    let first_expiry = claimed
        .iter()
        .filter_map(|r| r.lease_expires_at)
        .max()
        .unwrap();

    wait_until(
        "host A renews the lease of its running batch",
        secs(30),
        async || {
            let rows = events(&db.pool, "p").await;
            claimed_by_a(&rows)
                && rows.iter().all(|r| {
                    r.claim_batch_id == batch_id
                        && r.lease_expires_at.is_some_and(|l| l > first_expiry)
                })
        },
    )
    .await;

    // Host B starts while A holds and renews the batch: B is running, and takes nothing.
    let mut b = Host::start(&db.url, &["--plugin", &spec], &settings("host-b"));
    b.wait_ready(PATIENCE);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        claimed_by_a(&events(&db.pool, "p").await),
        "a running host B leaves A's renewed claims alone"
    );

    // A freezes (SIGSTOP: not dead, its connections open, its claims held, nothing renewed).
    // A renewal A sent just before the stop still lands, so its leases are read once settled.
    a.sigstop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows = events(&db.pool, "p").await;
    assert!(claimed_by_a(&rows), "A's claims outlive its stop: {rows:?}");
    let lease_at_stop: HashMap<Uuid, DateTime<Utc>> = rows
        .iter()
        .map(|r| {
            (
                r.id,
                r.lease_expires_at.expect("a processing row has a lease"),
            )
        })
        .collect();
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        lease_at_stop.values().all(|l| *l > now),
        "A's leases are still running after its stop ({now}): {lease_at_stop:?}"
    );

    let counts = wait_settled(&db.pool, "p", 3, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 3,
            ..StatusCounts::default()
        }
    );
    for row in events(&db.pool, "p").await {
        assert_eq!(
            row.claimed_by.as_deref(),
            Some("host-b"),
            "event {}",
            row.seq
        );
        let lease = lease_at_stop[&row.id];
        // B's claim of the event, read from the row: not before A's lease ran out.
        let taken = row.processing_started_at.expect("processing_started_at");
        eprintln!(
            "event {}: A's lease ran until {lease}, B claimed it at {taken} ({} ms later)",
            row.seq,
            (taken - lease).num_milliseconds()
        );
        assert!(
            taken >= lease,
            "event {}: host B claimed it at {taken}, while A's lease ran until {lease}",
            row.seq
        );
        assert!(
            row.done_at.is_some_and(|d| d > lease),
            "event {} done at {:?}, before A's lease ran out at {lease}",
            row.seq,
            row.done_at
        );
    }

    // B's plugin saw each event only once A's lease on it had run out.
    let marks = plugin_marks(&b.log_lines());
    for id in &ids {
        let begins: Vec<&PluginMark> = marks
            .iter()
            .filter(|m| m.begin && m.event_id == id.to_string())
            .collect();
        assert_eq!(begins.len(), 1, "host B began event {id} once");
        let lease_micros = lease_at_stop[id].timestamp_micros();
        assert!(
            begins[0].unix_micros > lease_micros,
            "host B began event {id} at {} µs, before A's lease expired at {lease_micros} µs",
            begins[0].unix_micros
        );
    }
    // A, still frozen, is killed: it never settled anything of its batch.
    a.sigkill();
    a.wait_exit(secs(10));
}

/// `(begin, end)` in unix microseconds of one handling of one event, from one host's log.
#[derive(Debug, Clone, Copy)]
struct Handling {
    begin: i64,
    end: i64,
}

/// Pairs each host's `begin`/`end` marks per event (a host handles one event at a time within a
/// plugin call, so within one host's log a begin is closed by the next end of that event).
fn handlings(marks: &[PluginMark]) -> HashMap<String, Vec<Handling>> {
    let mut open: HashMap<&str, i64> = HashMap::new();
    let mut done: HashMap<String, Vec<Handling>> = HashMap::new();
    for mark in marks {
        if mark.begin {
            let previous = open.insert(&mark.event_id, mark.unix_micros);
            assert!(
                previous.is_none(),
                "event {} began twice without ending",
                mark.event_id
            );
        } else {
            let begin = open
                .remove(mark.event_id.as_str())
                .unwrap_or_else(|| panic!("event {} ended without beginning", mark.event_id));
            done.entry(mark.event_id.clone())
                .or_default()
                .push(Handling {
                    begin,
                    end: mark.unix_micros,
                });
        }
    }
    assert!(
        open.is_empty(),
        "events begun but never ended: {:?}",
        open.keys()
    );
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_never_handle_the_same_event_at_the_same_time() {
    let db = TestDb::new().await;
    db.migrate();
    let spec = plugin_spec("p", &plugin("scripted"));
    let settings = |worker| {
        vec![
            ("OUTBOX_WORKER_ID", worker),
            ("OUTBOX_CONCURRENCY", "2"),
            ("OUTBOX_BATCH_SIZE", "5"),
        ]
    };
    let mut one = Host::start(&db.url, &["--plugin", &spec], &settings("host-one"));
    let mut two = Host::start(&db.url, &["--plugin", &spec], &settings("host-two"));
    one.wait_ready(PATIENCE);
    two.wait_ready(PATIENCE);

    let batch: Vec<NewEvent> = (0..300)
        .map(|i| {
            NewEvent::new(
                "p",
                format!("agg-{}", i % 30),
                json!({"outcome": "success", "sleep_ms": 20, "log": true}),
            )
        })
        .collect();
    insert_events(&db.pool, &batch).await;
    let counts = wait_settled(&db.pool, "p", 300, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 300,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "p").await;
    assert!(rows.iter().all(|r| r.attempts == 1));

    // The plugin logs before it returns, and the host marks done after: every mark is written.
    let by_one = handlings(&plugin_marks(&one.log_lines()));
    let by_two = handlings(&plugin_marks(&two.log_lines()));
    assert!(
        !by_one.is_empty() && !by_two.is_empty(),
        "both hosts handled events"
    );

    let mut by_event: HashMap<String, Vec<Handling>> = HashMap::new();
    for (id, handled) in by_one.into_iter().chain(by_two) {
        by_event.entry(id).or_default().extend(handled);
    }
    assert_eq!(by_event.len(), 300, "every event was handled");
    let mut by_aggregate: BTreeMap<&str, Vec<(i64, Handling)>> = BTreeMap::new();
    for row in &rows {
        let handled = by_event
            .get(&row.id.to_string())
            .unwrap_or_else(|| panic!("no begin/end marks for event {}", row.seq));
        assert_eq!(
            handled.len(),
            1,
            "event {} was handled {} times",
            row.seq,
            handled.len()
        );
        assert!(handled[0].begin <= handled[0].end);
        by_aggregate
            .entry(row.aggregate_id.as_str())
            .or_default()
            .push((row.seq, handled[0]));
    }
    // Nor are two events of one aggregate ever in the plugin at once, across hosts, and they go
    // through it in seq order.
    for (aggregate, handled) in &by_aggregate {
        for pair in handled.windows(2) {
            let ((seq_a, a), (seq_b, b)) = (pair[0], pair[1]);
            assert!(
                a.end <= b.begin,
                "{aggregate}: event {seq_b} began at {} µs, before event {seq_a} ended at {} µs",
                b.begin,
                a.end
            );
        }
    }
}
