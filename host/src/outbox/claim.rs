//! Claiming: the only way a row enters `processing` (see `claim.sql`).

use super::{Claim, ClaimedEvent};
use crate::settings::{Ordering, ProjectionSpec};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;
use uuid::Uuid;

const CLAIM_SQL: &str = include_str!("claim.sql");

/// The columns `claim.sql` returns, in order: seq, id, event_type, aggregate_type, aggregate_id,
/// payload as text, headers, occurred_at, attempts, reclaimed.
pub(crate) type Row = (
    i64,
    Uuid,
    String,
    String,
    String,
    String,
    serde_json::Value,
    DateTime<Utc>,
    i32,
    bool,
);

fn headers(value: serde_json::Value) -> Vec<(String, String)> {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One returned row as the event a plugin sees.
pub(crate) fn to_event(row: Row) -> ClaimedEvent {
    let (
        seq,
        id,
        event_type,
        aggregate_type,
        aggregate_id,
        payload,
        hdrs,
        occurred_at,
        attempt,
        reclaimed,
    ) = row;
    ClaimedEvent {
        seq,
        id,
        event_type,
        aggregate_type,
        aggregate_id,
        payload,
        headers: headers(hdrs),
        occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        attempt,
        reclaimed,
    }
}

/// Claims the next batch of `spec`'s projection for `worker_id`. Returns an empty claim when
/// nothing is due.
pub async fn claim(pool: &PgPool, spec: &ProjectionSpec, worker_id: &str) -> sqlx::Result<Claim> {
    let batch_id = Uuid::new_v4();
    let rows: Vec<Row> = sqlx::query_as(CLAIM_SQL)
        .bind(&spec.name)
        .bind(spec.tuning.batch_size)
        .bind(worker_id)
        .bind(batch_id)
        .bind(spec.ordering == Ordering::None)
        .bind(spec.tuning.max_attempts)
        .bind(spec.tuning.lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
    let mut events: Vec<ClaimedEvent> = rows.into_iter().map(to_event).collect();
    events.sort_by_key(|e| e.seq);
    Ok(Claim {
        batch_id,
        projection: spec.name.clone(),
        events,
    })
}
