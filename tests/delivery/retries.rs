//! Retries and terminal failures: a transient outcome is retried with exponential backoff and
//! jitter until it succeeds or the attempts run out; a deterministic outcome fails at once; the
//! retry and failure counters agree with the database, reason by reason.

use crate::common;

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

/// Records every attempt's claim and settle as the database saw it: a trigger on
/// `outbox_events` (the test's, not the host's) appends a row to `attempt_log` whenever an
/// event's status or attempt count changes, with the transaction's time.
async fn log_attempts_in_the_database(pool: &sqlx::PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE attempt_log (
             event_id uuid NOT NULL, attempts int NOT NULL, status text NOT NULL,
             next_retry_at timestamptz NOT NULL, processing_started_at timestamptz,
             at timestamptz NOT NULL DEFAULT now());
         CREATE FUNCTION log_attempt() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
         BEGIN
             IF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempts <> OLD.attempts THEN
                 INSERT INTO attempt_log (event_id, attempts, status, next_retry_at,
                                          processing_started_at)
                 VALUES (NEW.id, NEW.attempts, NEW.status, NEW.next_retry_at,
                         NEW.processing_started_at);
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER log_attempt AFTER UPDATE ON outbox_events
             FOR EACH ROW EXECUTE FUNCTION log_attempt();",
    )
    .execute(pool)
    .await
    .expect("install the attempt log");
}

/// One retry as the database recorded it: after failed attempt `attempt`, the settle set
/// `next_retry_at` `scheduled_ms` after its own time, and the next claim came `waited_ms` after
/// that settle.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempt: u32,
    scheduled_ms: f64,
    waited_ms: f64,
}

/// Per event id, its retries in attempt order, from `attempt_log`.
async fn retries_from_the_database(pool: &sqlx::PgPool) -> HashMap<String, Vec<Retry>> {
    let rows: Vec<(uuid::Uuid, i32, f64, f64)> = sqlx::query_as(
        "SELECT s.event_id, s.attempts,
                extract(epoch FROM s.next_retry_at - s.at)::float8 * 1000,
                extract(epoch FROM c.processing_started_at - s.at)::float8 * 1000
           FROM attempt_log s
           JOIN attempt_log c ON c.event_id = s.event_id AND c.attempts = s.attempts + 1
                             AND c.status = 'processing'
          WHERE s.status = 'pending'
          ORDER BY s.event_id, s.attempts",
    )
    .fetch_all(pool)
    .await
    .expect("read the attempt log");
    let mut by_event: HashMap<String, Vec<Retry>> = HashMap::new();
    for (event_id, attempt, scheduled_ms, waited_ms) in rows {
        by_event
            .entry(event_id.to_string())
            .or_default()
            .push(Retry {
                attempt: attempt as u32,
                scheduled_ms,
                waited_ms,
            });
    }
    by_event
}

/// How late a retry's claim may come after its `next_retry_at`: the loop wakes at the earliest
/// retry it scheduled, and polls every 200 ms (FAST) anyway; the rest is slack for a loaded
/// 2-core machine.
const WAKE_SLACK_MS: f64 = 500.0;

/// Checks one retry against the documented backoff, from the database alone: the delay the
/// settle scheduled is in range, and the next attempt was claimed no sooner than that, and not
/// much later.
fn assert_backoff(id: &str, retry: &Retry) {
    let (low, high) = delay_bounds_ms(retry.attempt);
    assert!(
        (low..=high).contains(&retry.scheduled_ms),
        "event {id} attempt {}: next_retry_at set {} ms after the settle, outside [{low}, {high}]",
        retry.attempt,
        retry.scheduled_ms
    );
    assert!(
        retry.waited_ms >= retry.scheduled_ms && retry.waited_ms >= low,
        "event {id} attempt {}: claimed again {} ms after the settle, before its delay of {} ms",
        retry.attempt,
        retry.waited_ms,
        retry.scheduled_ms
    );
    assert!(
        retry.waited_ms <= retry.scheduled_ms + WAKE_SLACK_MS,
        "event {id} attempt {}: claimed again {} ms after the settle, {} ms late",
        retry.attempt,
        retry.waited_ms,
        retry.waited_ms - retry.scheduled_ms
    );
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
    let _host = scripted_host(&db, "p", &[]);
    log_attempts_in_the_database(&db.pool).await;
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

    // The time between attempts, from the database.
    let retries = retries_from_the_database(&db.pool).await;
    let mut firsts = Vec::new();
    let mut seconds = Vec::new();
    let mut grew = 0;
    for id in &ids {
        let id = id.to_string();
        let delays = retries
            .get(&id)
            .unwrap_or_else(|| panic!("no retry of event {id} in the attempt log"));
        let attempts: Vec<u32> = delays.iter().map(|r| r.attempt).collect();
        assert_eq!(
            attempts,
            vec![1, 2],
            "event {id}: one retry per failed attempt"
        );
        for retry in delays {
            assert_backoff(&id, retry);
        }
        firsts.push(delays[0].waited_ms);
        seconds.push(delays[1].waited_ms);
        if delays[1].scheduled_ms > delays[0].scheduled_ms {
            grew += 1;
        }
    }
    eprintln!(
        "time between attempts (median): {:.0} ms after the first failure, {:.0} ms after the second",
        median(&firsts),
        median(&seconds)
    );
    assert!(
        grew >= 18,
        "the second delay was larger for only {grew} of 20 events"
    );
    assert!(
        median(&seconds) > median(&firsts),
        "the median time between attempts did not grow: {} ms then {} ms",
        median(&firsts),
        median(&seconds)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_delays_stop_growing_at_the_maximum() {
    let db = TestDb::new().await;
    let _host = scripted_host(&db, "p", &[("OUTBOX_MAX_ATTEMPTS", "10")]);
    log_attempts_in_the_database(&db.pool).await;
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

    let retries = retries_from_the_database(&db.pool).await;
    assert_eq!(
        retries.len(),
        10,
        "retries of every event in the attempt log"
    );
    let mut by_attempt: HashMap<u32, Vec<Retry>> = HashMap::new();
    for (id, delays) in &retries {
        assert_eq!(
            delays.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "event {id}"
        );
        for retry in delays {
            assert_backoff(id, retry);
            by_attempt.entry(retry.attempt).or_default().push(*retry);
        }
    }
    let waited: Vec<f64> = (1..=5)
        .map(|a| {
            median(
                &by_attempt[&a]
                    .iter()
                    .map(|r| r.waited_ms)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    eprintln!("time between attempts by attempt (median ms): {waited:?}");
    // Attempt 5 would be drawn from [400, 800] ms uncapped: every next_retry_at the settles
    // wrote is at most the 500 ms maximum after them (and each claim honoured it, above).
    let fifth: Vec<f64> = by_attempt[&5].iter().map(|r| r.scheduled_ms).collect();
    assert!(
        fifth.iter().all(|d| *d <= MAX_MS + 1.0),
        "fifth retries scheduled beyond the {MAX_MS} ms maximum: {fifth:?}"
    );
    assert!(
        waited[..4].windows(2).all(|w| w[1] > w[0]),
        "median time between attempts does not grow: {waited:?}"
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
