//! Drills E and F of seed 003, against the `stamps` read model (one row per applied event keyed by
//! the event id; the sink's trigger counts a second application, which the drill row reports):
//! - E: applications writing continuously, two hosts with four claim loops each, and the
//!   Postgres server restarted in the middle: no deadlock, no duplicate, nothing lost, and both
//!   hosts reconnect and carry on.
//! - F: a host killed with SIGKILL in the middle of a batch: the other host takes the batch over
//!   once its lease has expired, and applies it once.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Every event done and stamped exactly once, and no second application counted by the sink:
/// returns (events, second applications).
async fn assert_each_applied_once(pool: &sqlx::PgPool) -> (i64, i64) {
    let (events, done, stamps, unstamped): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox_events WHERE projection = 'stamp'),
                (SELECT count(*) FROM outbox_events WHERE projection = 'stamp' AND status = 'done'),
                (SELECT count(*) FROM stamps),
                (SELECT count(*) FROM outbox_events e WHERE projection = 'stamp'
                   AND NOT EXISTS (SELECT 1 FROM stamps s WHERE s.event_id = e.id))",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(done, events, "every event is done");
    assert_eq!(
        stamps, events,
        "one stamp per event: nothing lost, nothing applied twice"
    );
    assert_eq!(unstamped, 0);
    let duplicated = stamp_duplicates(pool).await;
    assert_eq!(duplicated, 0, "second applications counted at the sink");
    (events, duplicated)
}

/// An application inserting 10 events over 50 aggregates per statement until `stop`, riding out
/// a server restart (a failed statement wrote nothing and is tried again). Returns how many
/// events it wrote.
fn application(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut written = 0;
        while !stop.load(Ordering::Relaxed) {
            let inserted = sqlx::query(
                "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
                 SELECT 'stamp', 'thing.changed', 'agg-' || (random() * 49)::int,
                        jsonb_build_object('note', 'it''s; DROP TABLE stamps; --')
                 FROM generate_series(1, 10)",
            )
            .execute(&pool)
            .await;
            match inserted {
                Ok(r) => written += r.rows_affected() as i64,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        written
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_e_writers_two_hosts_and_a_postgres_restart_lose_nothing_and_duplicate_nothing() {
    // A server of this test's own: restarting the shared one would break the other tests.
    let server = PgServer::start_private();
    let db = TestDb::on(&server.admin_url).await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let env = [
        ("OUTBOX_CONCURRENCY", "4"),
        ("OUTBOX_BATCH_SIZE", "25"),
        ("OUTBOX_MAX_ATTEMPTS", "20"),
    ];
    let mut a = Host::start(&db.url, &["--config", config.to_str().unwrap()], &env);
    let mut b = Host::start(&db.url, &["--config", config.to_str().unwrap()], &env);
    a.wait_ready(PATIENCE);
    b.wait_ready(PATIENCE);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_lazy(&db.url)
                .unwrap();
            application(pool, stop.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted_at = chrono::Utc::now();
    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written > 200, "the application kept writing: {written}");

    let pool = db.new_pool().await;
    let counts = wait_settled(&pool, "stamp", written, secs(120)).await;
    assert_eq!(counts.done, written, "{counts:?}");
    let (events, duplicated) = assert_each_applied_once(&pool).await;
    assert_eq!(events, written);
    // Both hosts came back and carried on: each settled events written after the restart.
    let after: Vec<(String, i64)> = sqlx::query_as(
        "SELECT claimed_by, count(*) FROM outbox_events
         WHERE status = 'done' AND created_at > $1 GROUP BY claimed_by ORDER BY 1",
    )
    .bind(restarted_at)
    .fetch_all(&pool)
    .await
    .unwrap();
    for host in [&a, &b] {
        assert!(host.is_ready(), "host {} is ready again", host.worker_id);
        assert!(
            after.iter().any(|(w, n)| w == &host.worker_id && *n > 0),
            "host {} settled events after the restart: {after:?}",
            host.worker_id
        );
    }
    let deadlocks =
        a.log_text().matches("deadlock").count() + b.log_text().matches("deadlock").count();
    assert_eq!(deadlocks, 0, "no deadlock was reported");
    let reclaimed = a.metric_sum("projector_reclaimed_total", &[])
        + b.metric_sum("projector_reclaimed_total", &[]);
    drill_report(&pool, "E", &["stamp"], reclaimed, duplicated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_f_a_host_killed_mid_batch_is_taken_over_after_its_lease_and_applied_once() {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let events: Vec<NewEvent> = (0..6000)
        .map(|i| {
            NewEvent::new(
                "stamp",
                format!("agg-{}", i % 300),
                serde_json::json!({"i": i}),
            )
        })
        .collect();
    insert_events(&db.pool, &events).await;
    let lease = Duration::from_secs(2); // FAST
    let mut b = Host::start(
        &db.url,
        &["--config", config.to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "50"), ("OUTBOX_CONCURRENCY", "1")],
    );
    b.wait_ready(PATIENCE);

    // Kill host A while it holds a batch. Its batch is one transaction, so the rows it was
    // working on stay `processing` under its claim; if A happened to finish its batch just
    // before the kill, try again with a new A.
    let mut held = 0i64;
    let mut killed_at = Instant::now();
    let mut victim = String::new();
    for _ in 0..5 {
        let mut a = Host::start(
            &db.url,
            &["--config", config.to_str().unwrap()],
            &[("OUTBOX_BATCH_SIZE", "300"), ("OUTBOX_CONCURRENCY", "1")],
        );
        a.wait_ready(PATIENCE);
        wait_until("host A holds a batch", PATIENCE, async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox_events WHERE status = 'processing' AND claimed_by = $1",
            )
            .bind(&a.worker_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            n > 0
        })
        .await;
        a.sigkill();
        killed_at = Instant::now();
        a.wait_exit(PATIENCE);
        held = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE status = 'processing' AND claimed_by = $1",
        )
        .bind(&a.worker_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        victim = a.worker_id.clone();
        if held > 0 {
            break;
        }
    }
    assert!(held > 0, "host A was killed holding a batch");

    wait_until(
        "the killed host's batch is taken over",
        PATIENCE,
        async || {
            let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE status = 'processing' AND claimed_by = $1",
        )
        .bind(&victim)
        .fetch_one(&db.pool)
        .await
        .unwrap();
            n == 0
        },
    )
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < lease + Duration::from_secs(10),
        "taken over {took:?} after the kill (lease {lease:?})"
    );
    let counts = wait_settled(&db.pool, "stamp", 6000, secs(180)).await;
    assert_eq!(counts.done, 6000, "{counts:?}");
    let (_, duplicated) = assert_each_applied_once(&db.pool).await;
    let reclaimed = b.metric_sum("projector_reclaimed_total", &[("projection", "stamp")]);
    assert!(
        reclaimed >= held as f64,
        "host B reclaimed {reclaimed}, A held {held}"
    );
    drill_report(&db.pool, "F", &["stamp"], reclaimed, duplicated).await;
}
