//! Shutdown: SIGTERM stops a busy host cleanly (exit 0, nothing left `processing` in its name),
//! and `OUTBOX_RUN_SECONDS` makes a host stop by itself.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_busy_host_cleanly_and_leaves_nothing_processing() {
    let db = TestDb::new().await;
    db.migrate();
    // 100 events x 200 ms in batches of 10 over two loops: about ten seconds of work.
    insert_events(
        &db.pool,
        &(0..100)
            .map(|i| {
                NewEvent::new(
                    "p",
                    format!("agg-{i}"),
                    json!({"outcome": "success", "sleep_ms": 200}),
                )
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[("OUTBOX_BATCH_SIZE", "10"), ("OUTBOX_CONCURRENCY", "2")],
    );
    host.wait_ready(PATIENCE);
    let worker = host.worker_id.clone();
    let busy: &str =
        "SELECT count(*) FROM outbox_events WHERE status = 'processing' AND claimed_by = $1";
    wait_until(
        "the host is in the middle of its work",
        PATIENCE,
        async || {
            let counts = status_counts(&db.pool, "p").await;
            let processing: i64 = sqlx::query_scalar(busy)
                .bind(&worker)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            counts.done > 0 && processing > 0
        },
    )
    .await;

    host.sigterm();
    let status = host.wait_exit(secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    let still_processing: i64 = sqlx::query_scalar(busy)
        .bind(&worker)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        still_processing, 0,
        "rows left processing by the stopped host"
    );
    let counts = status_counts(&db.pool, "p").await;
    assert_eq!(counts.total(), 100);
    assert_eq!(counts.processing, 0);
    assert_eq!(counts.failed, 0);
    assert!(counts.done > 0, "{counts:?}");
    assert!(
        counts.pending > 0,
        "the host stopped instead of draining everything: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_seconds_makes_the_host_stop_by_itself() {
    let db = TestDb::new().await;
    db.migrate();
    insert_events(
        &db.pool,
        &(0..5)
            .map(|i| NewEvent::new("p", format!("agg-{i}"), json!({"outcome": "success"})))
            .collect::<Vec<_>>(),
    )
    .await;
    let started = Instant::now();
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[("OUTBOX_RUN_SECONDS", "2")],
    );
    let status = host.wait_exit(PATIENCE);
    let ran_for = started.elapsed();
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    assert!(
        ran_for >= Duration::from_millis(1900),
        "stopped after only {ran_for:?}"
    );
    // It did its job while it ran.
    assert_eq!(
        status_counts(&db.pool, "p").await,
        StatusCounts {
            done: 5,
            ..StatusCounts::default()
        }
    );
}
