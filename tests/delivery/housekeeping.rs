//! Housekeeping that reads the whole backlog (the stuck-work sweep, the gauge reading) is done
//! once per interval across all hosts, not once per host (migration 0012): every host still
//! exports the gauges, from the one stored reading.

use crate::common;

use common::*;
use projector_store::outbox::{lease, status};
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(600);

async fn lag(pool: &sqlx::PgPool, projection: &str, every: Duration) -> i64 {
    let gauges = status::gauges(pool, &[projection.to_owned()], every)
        .await
        .unwrap();
    assert_eq!(gauges.len(), 1, "{gauges:?}");
    gauges[0].lag
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_is_read_for_the_gauges_once_per_interval_and_every_host_gets_that_reading() {
    let db = TestDb::new().await;
    db.migrate();
    let events = |n: usize| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent::new("g", format!("agg-{i}"), json!({})))
            .collect()
    };
    insert_events(&db.pool, &events(3)).await;
    // Host A's refresh reads the outbox and stores the reading.
    assert_eq!(lag(&db.pool, "g", LONG).await, 3);
    let (first_read,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT refreshed_at FROM outbox_gauges WHERE projection = 'g'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    insert_events(&db.pool, &events(2)).await;
    // Host B (another pool, another session) refreshes within the interval: it gets A's reading
    // and the outbox is not read again.
    let b = projector_store::db::connect(&db.url, 1).await.unwrap();
    assert_eq!(lag(&b, "g", LONG).await, 3, "the stored reading");
    let (still,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT refreshed_at FROM outbox_gauges WHERE projection = 'g'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still, first_read, "nobody read the outbox again");
    // Positive control: once the reading is older than the interval, the next refresh reads the
    // outbox again and every host sees the new reading.
    assert_eq!(lag(&b, "g", Duration::ZERO).await, 5);
    assert_eq!(lag(&db.pool, "g", LONG).await, 5);
    // A projection with nothing unfinished is stored as zeros, not left out.
    sqlx::query("UPDATE outbox_events SET status = 'done', done_at = now() WHERE projection = 'g'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(lag(&db.pool, "g", Duration::ZERO).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_sweeps_a_projection_per_interval() {
    let db = TestDb::new().await;
    db.migrate();
    let b = projector_store::db::connect(&db.url, 1).await.unwrap();
    assert!(
        lease::sweep_due(&db.pool, "s", LONG).await.unwrap(),
        "first sweep"
    );
    assert!(
        !lease::sweep_due(&b, "s", LONG).await.unwrap(),
        "another host within the interval skips it"
    );
    assert!(
        lease::sweep_due(&b, "other", LONG).await.unwrap(),
        "projections are swept apart"
    );
    // Positive control: past the interval the sweep is due again, for one host only.
    assert!(lease::sweep_due(&b, "s", Duration::ZERO).await.unwrap());
    assert!(!lease::sweep_due(&db.pool, "s", LONG).await.unwrap());
}
