//! Claiming: the only way a row enters `processing` (see `claim_ordered.sql` and
//! `claim_unordered.sql`).
//!
//! Input bounds hold before a row is read into host memory: a payload over
//! `max_payload_bytes`, headers over [`MAX_HEADERS_BYTES`], or an event type, aggregate type or
//! aggregate id over [`MAX_NAME_BYTES`] come back from the claim as `NULL` with their size, and
//! the event carries why it is refused (`too_large`) instead of its content. A batch's payloads
//! total at most `batch_max_bytes` (its first event always goes), so the memory one batch takes
//! in the host and in the plugin is bounded by bytes, not only by the event count.
//!
//! Ordered claims of a projection take turns across every host ([`take_turn`], migration 0011):
//! each starts only once the one before it committed, so no two walk the same candidates. The
//! turn is a row lock on a host table a plugin's role has no privilege on.

use super::{Claim, ClaimedEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use projector_core::spec::{Ordering, ProjectionSpec};
use sqlx::PgPool;
use uuid::Uuid;

/// With per-aggregate ordering: walks `outbox_heads`, O(batch) whatever the skew.
pub const CLAIM_ORDERED_SQL: &str = concat!(
    include_str!("claim_ordered.sql"),
    include_str!("claim_returning.sql")
);
/// Waits for the projection's turn among ordered claims (migration 0011).
const CLAIM_TURN_SQL: &str = include_str!("claim_turn.sql");

/// How long a claim's transaction may sit idle while it holds its projection's turn before the
/// server ends its session (`claim_turn.sql`). Normally it is idle for one round trip.
pub const CLAIM_TURN_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Without ordering: the oldest due events.
const CLAIM_UNORDERED_SQL: &str = concat!(
    include_str!("claim_unordered.sql"),
    include_str!("claim_returning.sql")
);

/// The most bytes an event's headers (as JSON text) may have.
pub const MAX_HEADERS_BYTES: usize = 64 << 10;

/// The most bytes an event type, aggregate type or aggregate id may have.
pub const MAX_NAME_BYTES: usize = 1024;

/// The columns `claim_*.sql` return, in order: seq, id, event_type, aggregate_type, aggregate_id,
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
        too_large: None,
    }
}

/// What `claim_*.sql` return: the [`Row`] columns, each bounded field `NULL` when over its bound,
/// then the byte sizes of payload, headers, event type, aggregate type and aggregate id.
type BoundedRow = (
    i64,
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<serde_json::Value>,
    DateTime<Utc>,
    i32,
    bool,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// The event a claimed row becomes, or, when a field is over its bound, an event carrying only
/// its identity and why the host refuses it.
fn bounded_event(row: BoundedRow, max_payload: usize) -> ClaimedEvent {
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
        payload_bytes,
        headers_bytes,
        type_bytes,
        agg_type_bytes,
        agg_id_bytes,
    ) = row;
    let bound = |reason: &'static str, what: &str, size: i64, limit_name: &str, limit: usize| {
        (
            reason,
            format!(
                "{what} of {size} bytes is over {limit_name} ({limit}); the event was not read"
            ),
        )
    };
    let too_large = if payload.is_none() {
        Some(bound(
            "payload_too_large",
            "payload",
            payload_bytes,
            "max_payload_bytes",
            max_payload,
        ))
    } else if hdrs.is_none() {
        Some(bound(
            "headers_too_large",
            "headers",
            headers_bytes,
            "the headers bound",
            MAX_HEADERS_BYTES,
        ))
    } else if event_type.is_none() {
        Some(bound(
            "event_type_too_long",
            "event type",
            type_bytes,
            "the name bound",
            MAX_NAME_BYTES,
        ))
    } else if aggregate_type.is_none() {
        Some(bound(
            "aggregate_type_too_long",
            "aggregate type",
            agg_type_bytes,
            "the name bound",
            MAX_NAME_BYTES,
        ))
    } else if aggregate_id.is_none() {
        Some(bound(
            "aggregate_id_too_long",
            "aggregate id",
            agg_id_bytes,
            "the name bound",
            MAX_NAME_BYTES,
        ))
    } else {
        None
    };
    let mut event = to_event((
        seq,
        id,
        event_type.unwrap_or_default(),
        aggregate_type.unwrap_or_default(),
        aggregate_id.unwrap_or_default(),
        payload.unwrap_or_default(),
        hdrs.unwrap_or(serde_json::Value::Null),
        occurred_at,
        attempt,
        reclaimed,
    ));
    event.too_large = too_large;
    event
}

/// Claims the next batch of `spec`'s projection for `worker_id`. Returns an empty claim when
/// nothing is due.
///
/// An ordered claim runs in a transaction of its own that first waits for the projection's turn
/// ([`take_turn`]), so ordered claims of one projection, on every host, run one after the other
/// and each sees what the one before it took. The unordered claim locks rows as it scans them (a
/// claim running beside it skips those and goes on), so it needs no turn.
pub async fn claim(pool: &PgPool, spec: &ProjectionSpec, worker_id: &str) -> sqlx::Result<Claim> {
    match spec.ordering {
        Ordering::Aggregate => {
            let mut tx = pool.begin().await?;
            let claim = claim_on(&mut tx, spec, worker_id).await?;
            tx.commit().await?;
            Ok(claim)
        }
        Ordering::None => claim_on(&mut *pool.acquire().await?, spec, worker_id).await,
    }
}

/// [`claim`] on `conn`, which for an ordered projection must be in a transaction: the turn is
/// held, and the claimed rows are visible to other claims, only once it commits.
pub async fn claim_on(
    conn: &mut sqlx::PgConnection,
    spec: &ProjectionSpec,
    worker_id: &str,
) -> sqlx::Result<Claim> {
    let batch_id = Uuid::new_v4();
    let statement = match spec.ordering {
        Ordering::Aggregate => {
            take_turn(&mut *conn, &spec.name).await?;
            CLAIM_ORDERED_SQL
        }
        Ordering::None => CLAIM_UNORDERED_SQL,
    };
    let rows: Vec<BoundedRow> = bound_statement(statement, spec, worker_id, batch_id)
        .fetch_all(conn)
        .await?;
    let max_payload = spec.tuning.max_payload_bytes;
    let mut events: Vec<ClaimedEvent> = rows
        .into_iter()
        .map(|r| bounded_event(r, max_payload))
        .collect();
    events.sort_by_key(|e| e.seq);
    Ok(Claim {
        batch_id,
        projection: spec.name.clone(),
        events,
    })
}

/// `statement` (either claim) with its parameters for `spec`'s projection, `worker_id` and the
/// fencing token `batch_id`: the one place the claims' parameters are listed.
pub fn bound_statement<'q, O>(
    statement: &'q str,
    spec: &'q ProjectionSpec,
    worker_id: &'q str,
    batch_id: Uuid,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    sqlx::query_as(statement)
        .bind(&spec.name)
        .bind(spec.tuning.batch_size)
        .bind(worker_id)
        .bind(batch_id)
        .bind(spec.tuning.events_per_aggregate)
        .bind(spec.tuning.max_attempts)
        .bind(spec.tuning.lease.as_secs_f64())
        .bind(spec.tuning.max_payload_bytes.min(i32::MAX as usize) as i32)
        .bind(MAX_HEADERS_BYTES as i32)
        .bind(MAX_NAME_BYTES as i32)
        .bind(spec.tuning.batch_max_bytes.min(i64::MAX as usize) as i64)
}

/// Waits, in the claim's transaction on `conn`, until no other ordered claim of `projection` is
/// running on any host, and holds the turn until that transaction ends (or the server ends the
/// session after [`CLAIM_TURN_IDLE_LIMIT`] idle).
///
/// Two ordered claims at the same moment would see the same candidates, and the one that locks
/// them second would get none of them (SKIP LOCKED): a wasted walk, and a loop asleep until the
/// next poll in the middle of a backlog (migration 0011 has the figures).
///
/// The transaction then commits without waiting for its WAL flush (`synchronous_commit = off`,
/// local to it): every host waits for the turn until this COMMIT returns, and the flush was most
/// of it. A crash can lose only the claim, which leaves its rows `pending` as an expired lease
/// would (a batch already handed to a plugin is fenced off at its settle and delivered again);
/// the settle commits synchronously, and its flush covers the claim's WAL before it.
pub async fn take_turn(conn: &mut sqlx::PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query(CLAIM_TURN_SQL)
        .bind(projection)
        .bind(CLAIM_TURN_IDLE_LIMIT.as_millis().to_string())
        .execute(conn)
        .await?;
    Ok(())
}
