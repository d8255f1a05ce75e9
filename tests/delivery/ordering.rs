//! Ordering: with the default `ordering = "aggregate"`, events of one aggregate are settled in
//! `seq` order even with two hosts competing and retries in between; `ordering = "none"` (set in
//! a TOML file) lets later events of an aggregate go ahead of one that is waiting for a retry.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_settle_each_aggregate_in_seq_order_despite_retries() {
    let db = TestDb::new().await;
    db.migrate();
    let scripted = plugin("scripted");
    let settings = |worker| {
        vec![
            ("OUTBOX_WORKER_ID", worker),
            ("OUTBOX_CONCURRENCY", "2"),
            ("OUTBOX_BATCH_SIZE", "10"),
        ]
    };
    let spec = plugin_spec("p", &scripted);
    let mut one = Host::start(&db.url, &["--plugin", &spec], &settings("host-one"));
    let mut two = Host::start(&db.url, &["--plugin", &spec], &settings("host-two"));
    one.wait_ready(PATIENCE);
    two.wait_ready(PATIENCE);

    // 50 aggregates x 10 events, interleaved round robin; every 7th event fails transiently once
    // or twice first. A short sleep keeps each batch busy long enough for both hosts to claim.
    let mut batch = Vec::new();
    let mut expected_attempts = Vec::new();
    for round in 0..10 {
        for aggregate in 0..50 {
            let n = round * 50 + aggregate;
            let (payload, attempts) = if n % 7 == 0 {
                let fail_times = 1 + (n / 7) % 2;
                (
                    json!({"outcome": "transient_then_success", "fail_times": fail_times, "sleep_ms": 2}),
                    fail_times + 1,
                )
            } else {
                (json!({"outcome": "success", "sleep_ms": 2}), 1)
            };
            batch.push(NewEvent::new("p", format!("agg-{aggregate}"), payload));
            expected_attempts.push(attempts);
        }
    }
    insert_events(&db.pool, &batch).await;

    let counts = wait_settled(&db.pool, "p", 500, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 500,
            ..StatusCounts::default()
        }
    );

    let rows = events(&db.pool, "p").await;
    let mut by_aggregate: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for (row, attempts) in rows.iter().zip(&expected_attempts) {
        assert_eq!(row.attempts, *attempts, "event {} attempts", row.seq);
        by_aggregate
            .entry(row.aggregate_id.as_str())
            .or_default()
            .push(row);
    }
    assert_eq!(by_aggregate.len(), 50);
    for (aggregate, rows) in &by_aggregate {
        assert_eq!(rows.len(), 10);
        for pair in rows.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            assert!(
                later.done_at > earlier.done_at,
                "{aggregate}: event {} done at {:?}, not after event {} done at {:?}",
                later.seq,
                later.done_at,
                earlier.seq,
                earlier.done_at
            );
        }
    }

    let workers: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.claimed_by.as_deref())
        .collect();
    assert_eq!(
        workers,
        BTreeSet::from(["host-one", "host-two"]),
        "both hosts delivered events"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ordering_none_in_a_config_file_lets_later_events_pass_one_waiting_for_a_retry() {
    let db = TestDb::new().await;
    db.migrate();
    // Aggregate `x`: its first event fails twice before succeeding; with ordering "none" the four
    // after it do not wait. Ten more aggregates with five events each drain alongside.
    let mut batch = vec![NewEvent::new(
        "loose",
        "x",
        json!({"outcome": "transient_then_success", "fail_times": 2}),
    )];
    for _ in 0..4 {
        batch.push(NewEvent::new("loose", "x", json!({"outcome": "success"})));
    }
    for i in 0..50 {
        batch.push(NewEvent::new(
            "loose",
            format!("agg-{}", i % 10),
            json!({"outcome": "success"}),
        ));
    }
    let ids = insert_events(&db.pool, &batch).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "projector.toml",
        format!(
            "batch_size = 100\n\n[[projection]]\nname = \"loose\"\nplugin = \"{}\"\nordering = \"none\"\n",
            plugin("scripted").display()
        ),
    );
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);

    let counts = wait_settled(&db.pool, "loose", 55, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 55,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "loose").await;
    let first = &rows[0];
    assert_eq!(first.id, ids[0]);
    assert_eq!(first.attempts, 3);
    for later in &rows[1..5] {
        assert_eq!(later.attempts, 1);
        assert!(
            later.done_at < first.done_at,
            "event {} (done {:?}) waited for the retrying event {} (done {:?})",
            later.seq,
            later.done_at,
            first.seq,
            first.done_at
        );
    }
    assert!(rows[5..].iter().all(|r| r.attempts == 1));
}
