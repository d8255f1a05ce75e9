//! Plugin faults inside a batch: a trap (panic) or a wrong number of outcomes is charged to the
//! one event that causes it, the rest of the batch is delivered untouched, and the host keeps
//! serving.

use crate::common;

use common::*;
use serde_json::{json, Value};

/// `OUTBOX_MAX_ATTEMPTS` of `FAST`.
const MAX_ATTEMPTS: i32 = 3;

/// Twenty events on twenty aggregates, all in one batch, the eighth one poisoned with `poison`;
/// asserts that only it fails, with `reason`, after all its attempts.
async fn one_poisoned_event_in_a_batch_of_twenty(poison: Value, reason: &str) {
    let db = TestDb::new().await;
    db.migrate();
    // Inserted before the host starts, so its first claim takes all twenty in one batch.
    let batch: Vec<NewEvent> = (0..20)
        .map(|i| {
            let payload = if i == 7 {
                poison.clone()
            } else {
                json!({"outcome": "success"})
            };
            NewEvent::new("p", format!("agg-{i}"), payload)
        })
        .collect();
    let ids = insert_events(&db.pool, &batch).await;
    let poisoned = ids[7];

    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[("OUTBOX_BATCH_SIZE", "20"), ("OUTBOX_CONCURRENCY", "1")],
    );
    host.wait_ready(PATIENCE);

    let counts = wait_settled(&db.pool, "p", 20, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 19,
            failed: 1,
            ..StatusCounts::default()
        }
    );
    for row in events(&db.pool, "p").await {
        if row.id == poisoned {
            assert_eq!(row.status, "failed");
            assert_eq!(row.attempts, MAX_ATTEMPTS);
            assert_eq!(row.error_reason.as_deref(), Some(reason));
            assert_eq!(row.failure_kind.as_deref(), Some("attempts_exhausted"));
        } else {
            assert_eq!(row.status, "done", "event {}", row.seq);
            assert_eq!(
                row.attempts, 1,
                "event {} was charged for its neighbour",
                row.seq
            );
        }
    }

    assert!(host.is_ready(), "the host still serves /readyz with 200");
    let terminal = || {
        host.metric(
            "outbox_terminal_failed_total",
            &[("projection", "p"), ("reason", reason)],
        )
    };
    wait_until("the terminal failure is counted", PATIENCE, async || {
        terminal().is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(terminal(), Some(1.0));
    assert_eq!(
        host.metric("outbox_dispatch_success_total", &[("projection", "p")]),
        Some(19.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_event_fails_alone_and_its_batch_neighbours_are_delivered() {
    one_poisoned_event_in_a_batch_of_twenty(json!({"outcome": "trap"}), "plugin_trap").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_outcome_count_is_charged_to_the_event_that_causes_it() {
    one_poisoned_event_in_a_batch_of_twenty(json!({"outcome": "wrong_count"}), "plugin_contract")
        .await;
}
