//! Retries and terminal failures: a transient outcome is retried with exponential backoff and
//! jitter until it succeeds or the attempts run out; a deterministic outcome fails at once; the
//! retry and failure counters agree with the database, reason by reason.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

/// `OUTBOX_BASE_BACKOFF_SECONDS` and `OUTBOX_MAX_BACKOFF_SECONDS` of `FAST`, in milliseconds.
const BASE_MS: f64 = 50.0;
const MAX_MS: f64 = 500.0;
/// `OUTBOX_MAX_ATTEMPTS` of `FAST`.
const MAX_ATTEMPTS: i32 = 3;

/// The documented range of the delay after failed attempt `n` (1-based): drawn from
/// `[d/2, d]` with `d = base * 2^(n-1)` capped at max. One millisecond of slack each side for
/// rounding to whole milliseconds.
fn delay_bounds_ms(attempt: u32) -> (f64, f64) {
    let d = (BASE_MS * 2f64.powi(attempt as i32 - 1)).min(MAX_MS);
    (d / 2.0 - 1.0, d + 1.0)
}

/// The host's "retry scheduled" records, per event id: `(attempt, delay_ms)` by attempt.
fn scheduled_retries(records: &[Value]) -> HashMap<String, Vec<(u32, f64)>> {
    let mut by_event: HashMap<String, Vec<(u32, f64)>> = HashMap::new();
    for record in records_with_message(records, "retry scheduled") {
        let event_id = field_str(record, "event_id").expect("retry record has event_id");
        let attempt = field_f64(record, "attempt").expect("retry record has attempt") as u32;
        let delay = field_f64(record, "delay_ms").expect("retry record has delay_ms");
        by_event.entry(event_id).or_default().push((attempt, delay));
    }
    for retries in by_event.values_mut() {
        retries.sort_by_key(|(attempt, _)| *attempt);
    }
    by_event
}

fn scripted_host(db: &TestDb, projection: &str, env: &[(&str, &str)]) -> Host {
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec(projection, &plugin("scripted"))],
        env,
    );
    host.wait_ready(PATIENCE);
    host
}

fn same_payload(projection: &str, n: usize, payload: Value) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new(projection, format!("agg-{i}"), payload.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_with_growing_delays_then_succeed() {
    let db = TestDb::new().await;
    let host = scripted_host(&db, "p", &[]);
    let ids = insert_events(
        &db.pool,
        &same_payload(
            "p",
            20,
            json!({"outcome": "transient_then_success", "fail_times": 2}),
        ),
    )
    .await;

    let counts = wait_settled(&db.pool, "p", 20, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 20,
            ..StatusCounts::default()
        }
    );
    for row in events(&db.pool, "p").await {
        assert_eq!(
            row.attempts, 3,
            "event {} took two failures and one success",
            row.seq
        );
        assert!(row.done_at.is_some());
    }

    let retries = scheduled_retries(&host.log_lines());
    let mut firsts = Vec::new();
    let mut seconds = Vec::new();
    let mut grew = 0;
    for id in &ids {
        let delays = retries
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("no \"retry scheduled\" record for event {id}"));
        let attempts: Vec<u32> = delays.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            attempts,
            vec![1, 2],
            "event {id}: one retry per failed attempt"
        );
        for &(attempt, delay) in delays {
            let (low, high) = delay_bounds_ms(attempt);
            assert!(
                (low..=high).contains(&delay),
                "event {id} attempt {attempt}: delay {delay} ms outside [{low}, {high}]"
            );
        }
        firsts.push(delays[0].1);
        seconds.push(delays[1].1);
        if delays[1].1 > delays[0].1 {
            grew += 1;
        }
    }
    assert!(
        grew >= 18,
        "the second delay was larger for only {grew} of 20 events"
    );
    assert!(
        median(&seconds) > median(&firsts),
        "median delay did not grow: {} ms then {} ms",
        median(&firsts),
        median(&seconds)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_delays_stop_growing_at_the_maximum() {
    let db = TestDb::new().await;
    let host = scripted_host(&db, "p", &[("OUTBOX_MAX_ATTEMPTS", "10")]);
    insert_events(
        &db.pool,
        &same_payload(
            "p",
            10,
            json!({"outcome": "transient_then_success", "fail_times": 5}),
        ),
    )
    .await;

    let counts = wait_settled(&db.pool, "p", 10, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 10,
            ..StatusCounts::default()
        }
    );
    assert!(events(&db.pool, "p").await.iter().all(|r| r.attempts == 6));

    let retries = scheduled_retries(&host.log_lines());
    assert_eq!(retries.len(), 10, "retry records for every event");
    let mut by_attempt: HashMap<u32, Vec<f64>> = HashMap::new();
    for (id, delays) in &retries {
        assert_eq!(
            delays.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "event {id}"
        );
        for &(attempt, delay) in delays {
            let (low, high) = delay_bounds_ms(attempt);
            assert!(
                (low..=high).contains(&delay),
                "event {id} attempt {attempt}: delay {delay} ms outside [{low}, {high}]"
            );
            by_attempt.entry(attempt).or_default().push(delay);
        }
    }
    // Attempt 5 would be 800 ms uncapped: every draw stays at or under the 500 ms maximum.
    assert!(by_attempt[&5].iter().all(|d| *d <= MAX_MS + 1.0));
    let medians: Vec<f64> = (1..=4).map(|a| median(&by_attempt[&a])).collect();
    assert!(
        medians.windows(2).all(|w| w[1] > w[0]),
        "median delays by attempt do not grow: {medians:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_always_transient_event_fails_once_its_attempts_are_exhausted() {
    let db = TestDb::new().await;
    let _host = scripted_host(&db, "p", &[]);
    insert_events(
        &db.pool,
        &same_payload(
            "p",
            10,
            json!({"outcome": "transient", "reason": "es_connect"}),
        ),
    )
    .await;

    let counts = wait_settled(&db.pool, "p", 10, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            failed: 10,
            ..StatusCounts::default()
        }
    );
    for row in events(&db.pool, "p").await {
        assert_eq!(row.attempts, MAX_ATTEMPTS, "event {}", row.seq);
        assert_eq!(row.error_reason.as_deref(), Some("es_connect"));
        assert_eq!(row.failure_kind.as_deref(), Some("attempts_exhausted"));
        assert!(
            row.error.as_deref().is_some_and(|e| !e.is_empty()),
            "event {} error",
            row.seq
        );
        assert_eq!(row.done_at, None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deterministic_failure_fails_at_once() {
    let db = TestDb::new().await;
    let _host = scripted_host(&db, "p", &[]);
    insert_events(
        &db.pool,
        &same_payload(
            "p",
            10,
            json!({"outcome": "deterministic", "reason": "bad_payload"}),
        ),
    )
    .await;

    let counts = wait_settled(&db.pool, "p", 10, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            failed: 10,
            ..StatusCounts::default()
        }
    );
    for row in events(&db.pool, "p").await {
        assert_eq!(row.attempts, 1, "event {}", row.seq);
        assert_eq!(row.error_reason.as_deref(), Some("bad_payload"));
        assert_eq!(row.failure_kind.as_deref(), Some("deterministic"));
        assert!(
            row.error.as_deref().is_some_and(|e| !e.is_empty()),
            "event {} error",
            row.seq
        );
        assert_eq!(row.done_at, None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_and_failure_counters_match_the_outcomes_reason_by_reason() {
    let db = TestDb::new().await;
    let host = scripted_host(&db, "p", &[]);
    let mut batch = Vec::new();
    let kinds = [
        json!({"outcome": "success"}),
        json!({"outcome": "transient_then_success", "fail_times": 2}),
        json!({"outcome": "transient", "reason": "es_connect"}),
        json!({"outcome": "deterministic", "reason": "bad_payload"}),
    ];
    for i in 0..40 {
        batch.push(NewEvent::new("p", format!("agg-{i}"), kinds[i % 4].clone()));
    }
    insert_events(&db.pool, &batch).await;

    let counts = wait_settled(&db.pool, "p", 40, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 20,
            failed: 20,
            ..StatusCounts::default()
        }
    );

    // Every plugin outcome is exactly one of: success, retry scheduled, terminal failure, and
    // `outbox_dispatch_total` counts each once under its result.
    // 10 success x 1 + 10 transient_then_success x (2 retries + 1 success)
    // + 10 always-transient x (2 retries + 1 terminal) + 10 deterministic x 1 terminal.
    let retries_expected = 10.0 * (MAX_ATTEMPTS as f64 - 1.0) + 10.0 * 2.0;
    let p = ("projection", "p");
    let terminal = |reason| host.metric("outbox_terminal_failed_total", &[p, ("reason", reason)]);
    wait_until("all 80 outcomes are counted", PATIENCE, async || {
        host.metric_sum("outbox_dispatch_total", &[p]) >= 80.0
            && terminal("es_connect").unwrap_or(0.0) >= 10.0
            && terminal("bad_payload").unwrap_or(0.0) >= 10.0
    })
    .await;

    assert_eq!(
        host.metric(
            "outbox_retry_scheduled_total",
            &[p, ("reason", "es_connect")]
        ),
        Some(retries_expected)
    );
    assert_eq!(
        host.metric_sum("outbox_retry_scheduled_total", &[p]),
        retries_expected,
        "no retries under another reason"
    );

    let failed_by_reason: Vec<(String, i64)> = sqlx::query_as(
        "SELECT error_reason, count(*) FROM outbox_events
          WHERE projection = 'p' AND status = 'failed' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        failed_by_reason,
        vec![
            ("bad_payload".to_owned(), 10),
            ("es_connect".to_owned(), 10)
        ]
    );
    for (reason, n) in &failed_by_reason {
        assert_eq!(
            terminal(reason.as_str()),
            Some(*n as f64),
            "terminal failures for {reason}"
        );
    }
    assert_eq!(host.metric_sum("outbox_terminal_failed_total", &[p]), 20.0);

    assert_eq!(
        host.metric("outbox_dispatch_success_total", &[p]),
        Some(20.0)
    );
    assert_eq!(
        host.metric("outbox_dispatch_retry_total", &[p]),
        Some(retries_expected)
    );
    // A failed delivery attempt either schedules a retry or is terminal.
    assert_eq!(
        host.metric("outbox_dispatch_failure_total", &[p]),
        Some(retries_expected + 20.0)
    );
    assert_eq!(
        host.metric_sum("outbox_dispatch_total", &[p]),
        20.0 + retries_expected + 20.0
    );
    assert_eq!(
        host.metric_sum("outbox_dispatch_total", &[p, ("result", "success")]),
        20.0
    );
}
