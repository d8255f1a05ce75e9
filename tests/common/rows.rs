//! Writing events as an application would, and reading back what the host made of them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPool;
use uuid::Uuid;

/// An event as an application would write it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub projection: String,
    pub event_type: String,
    /// `None` leaves the column to its default (and, if no event in the insert sets one, the
    /// column is left out of the statement altogether).
    pub aggregate_type: Option<String>,
    pub aggregate_id: String,
    pub payload: Value,
}

impl NewEvent {
    /// An event of type `test.event` with no aggregate type.
    pub fn new(projection: &str, aggregate_id: impl Into<String>, payload: Value) -> NewEvent {
        NewEvent {
            projection: projection.to_owned(),
            event_type: "test.event".to_owned(),
            aggregate_type: None,
            aggregate_id: aggregate_id.into(),
            payload,
        }
    }

    /// With this event type.
    pub fn event_type(mut self, event_type: &str) -> NewEvent {
        self.event_type = event_type.to_owned();
        self
    }

    /// With this aggregate type.
    pub fn aggregate_type(mut self, aggregate_type: &str) -> NewEvent {
        self.aggregate_type = Some(aggregate_type.to_owned());
        self
    }
}

/// Inserts `events` in one statement, in slice order (so `seq` follows the slice), and returns
/// their ids in that order.
pub async fn insert_events(pool: &PgPool, events: &[NewEvent]) -> Vec<Uuid> {
    let projections: Vec<String> = events.iter().map(|e| e.projection.clone()).collect();
    let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
    let aggregate_ids: Vec<String> = events.iter().map(|e| e.aggregate_id.clone()).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
    let rows: Vec<(i64, Uuid)> = if events.iter().all(|e| e.aggregate_type.is_none()) {
        sqlx::query_as(
            "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
             SELECT p, t, a, pl::jsonb
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                    WITH ORDINALITY AS u(p, t, a, pl, ord)
              ORDER BY ord
             RETURNING seq, id",
        )
        .bind(&projections)
        .bind(&types)
        .bind(&aggregate_ids)
        .bind(&payloads)
        .fetch_all(pool)
        .await
    } else {
        let aggregate_types: Vec<String> = events
            .iter()
            .map(|e| e.aggregate_type.clone().unwrap_or_default())
            .collect();
        sqlx::query_as(
            "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload, aggregate_type)
             SELECT p, t, a, pl::jsonb, at
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                    WITH ORDINALITY AS u(p, t, a, pl, at, ord)
              ORDER BY ord
             RETURNING seq, id",
        )
        .bind(&projections)
        .bind(&types)
        .bind(&aggregate_ids)
        .bind(&payloads)
        .bind(&aggregate_types)
        .fetch_all(pool)
        .await
    }
    .expect("insert events");
    let mut rows = rows;
    rows.sort_by_key(|(seq, _)| *seq);
    assert_eq!(rows.len(), events.len(), "every event inserted");
    rows.into_iter().map(|(_, id)| id).collect()
}

/// One row of `outbox_events`, as the scenarios look at it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub id: Uuid,
    pub projection: String,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub payload: Value,
    pub headers: Value,
    pub status: String,
    pub attempts: i32,
    pub next_retry_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub claim_batch_id: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub processing_started_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub error_reason: Option<String>,
    pub error: Option<String>,
    pub failure_kind: Option<String>,
    pub projection_version: Option<String>,
}

/// Every row of `projection`, in `seq` order.
pub async fn events(pool: &PgPool, projection: &str) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT seq, id, projection, event_type, aggregate_type, aggregate_id, payload, headers,
                status, attempts, next_retry_at, claimed_by, claim_batch_id, lease_expires_at,
                processing_started_at, done_at, error_reason, error, failure_kind,
                projection_version
           FROM outbox_events
          WHERE projection = $1
          ORDER BY seq",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
    .expect("select events")
}

/// How many rows of one projection are in each status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    pub pending: i64,
    pub processing: i64,
    pub done: i64,
    pub failed: i64,
    /// Skipped by an operator (terminal).
    pub skipped: i64,
}

impl StatusCounts {
    pub fn total(&self) -> i64 {
        self.pending + self.processing + self.done + self.failed + self.skipped
    }

    /// Rows the host still has to settle (pending, including those waiting for a retry, and
    /// processing).
    pub fn unfinished(&self) -> i64 {
        self.pending + self.processing
    }
}

/// Counts rows of `projection` by status.
pub async fn status_counts(pool: &PgPool, projection: &str) -> StatusCounts {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM outbox_events WHERE projection = $1 GROUP BY status",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
    .expect("count events by status");
    let mut counts = StatusCounts::default();
    for (status, n) in rows {
        match status.as_str() {
            "pending" => counts.pending = n,
            "processing" => counts.processing = n,
            "done" => counts.done = n,
            "failed" => counts.failed = n,
            "skipped" => counts.skipped = n,
            other => panic!("unexpected status {other:?}"),
        }
    }
    counts
}

/// Waits until all `expected_total` rows of `projection` are done or failed; returns the counts.
/// Panics with the last counts seen on timeout.
pub async fn wait_settled(
    pool: &PgPool,
    projection: &str,
    expected_total: i64,
    timeout: Duration,
) -> StatusCounts {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = status_counts(pool, projection).await;
        if counts.total() == expected_total && counts.unfinished() == 0 {
            return counts;
        }
        if Instant::now() >= deadline {
            panic!(
                "projection {projection:?} not settled after {timeout:?}: {counts:?} \
                 (expected {expected_total} rows, all done or failed)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints one row of the drill table (`cargo test -- --nocapture` shows it) after a drill's
/// invariants held: events, how many ended done / failed, retries (attempts beyond the first),
/// events taken over from an expired lease, events still unfinished (lost), and events applied
/// twice (`duplicated`, as the drill measured it at its sink).
pub async fn drill_report(
    pool: &PgPool,
    drill: &str,
    projections: &[&str],
    reclaimed: f64,
    duplicated: i64,
) {
    let (events, done, failed, retries, unfinished): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE status = 'done'),
                count(*) FILTER (WHERE status = 'failed'),
                COALESCE(sum(GREATEST(attempts - 1, 0)), 0)::bigint,
                count(*) FILTER (WHERE status IN ('pending', 'processing'))
         FROM outbox_events WHERE projection = ANY($1)",
    )
    .bind(projections)
    .fetch_one(pool)
    .await
    .expect("drill counts");
    println!(
        "DRILL {drill}: events={events} done={done} failed={failed} retries={retries} reclaimed={reclaimed} lost={unfinished} duplicated={duplicated}"
    );
}

/// An application writing 5 events of projection `stamp` every 10 ms over `aggregates`
/// aggregates (`agg-<i>`) for `how_long`; yields how many it wrote.
pub fn keep_writing(
    pool: PgPool,
    aggregates: usize,
    how_long: Duration,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < how_long {
            let batch: Vec<NewEvent> = (0..5)
                .map(|i| {
                    NewEvent::new(
                        "stamp",
                        format!("agg-{}", (n + i) % aggregates),
                        serde_json::json!({"n": n + i}),
                    )
                })
                .collect();
            insert_events(&pool, &batch).await;
            n += 5;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n
    })
}
