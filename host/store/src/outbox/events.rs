//! Listing events for an operator: which events are failed (or blocked, or in any other state),
//! with ids, reasons and payload excerpts, and one event's whole record with its replay
//! history. `projector events`, `GET /projections/{name}/events` and the console read here.
//!
//! Invariants:
//! - Read only: nothing here writes a row.
//! - Bounded: a page holds at most [`MAX_PAGE`] events, each with at most [`EXCERPT_CHARS`]
//!   characters of its error and payload; one event's payload and headers come back whole only
//!   up to [`DETAIL_TEXT_CHARS`] characters (beyond, the cut text and the full size), so an
//!   oversized payload (which is attacker-controlled) costs a reader a bounded amount.
//! - Pages go by `seq` (oldest first): the next page starts after the last `seq` of this one,
//!   so rows settling meanwhile never shift a page.
//! - `blocked` is the status `projector status` counts as blocked: pending behind a failed event
//!   of the same aggregate; each such row names the blocking event's `seq`.

use super::operator::AuditEntry;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The statuses an operator may list: the stored ones and `blocked`.
pub const LISTABLE: [&str; 6] = [
    "failed",
    "blocked",
    "pending",
    "processing",
    "done",
    "skipped",
];
/// The most events one page holds.
pub const MAX_PAGE: i64 = 500;
/// Characters of the error and of the payload text a listed event carries.
pub const EXCERPT_CHARS: i32 = 200;
/// Characters of the payload (and of the headers) one event's detail carries whole.
pub const DETAIL_TEXT_CHARS: i32 = 256 * 1024;

const LIST: &str = include_str!("events_list.sql");
const BLOCKED: &str = include_str!("events_blocked.sql");
const DETAIL: &str = include_str!("events_detail.sql");
const HISTORY: &str = include_str!("events_history.sql");

/// Which events to list.
#[derive(Debug, Clone)]
pub struct Query {
    /// One of [`LISTABLE`].
    pub status: String,
    /// Only events failed with this reason (for `blocked`: whose blocking event failed so).
    pub error_reason: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events after this seq (the last seq of the previous page).
    pub after_seq: i64,
    /// At most this many (clamped to 1..=[`MAX_PAGE`]).
    pub limit: i64,
}

/// One listed event.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct EventSummary {
    /// Its position in the outbox (the detail's and the next page's key).
    pub seq: i64,
    /// Its id (what `projector skip --ids` and `replay --ids` take).
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its aggregate's type (`""` when none).
    pub aggregate_type: String,
    /// Its aggregate.
    pub aggregate_id: String,
    /// Its stored status (a blocked event is `pending`).
    pub status: String,
    /// Attempts made since it was written or last replayed.
    pub attempts: i32,
    /// Why it last failed.
    pub error_reason: Option<String>,
    /// `deterministic` or `attempts_exhausted` for a failed event.
    pub failure_kind: Option<String>,
    /// The start of its error message.
    pub error_excerpt: Option<String>,
    /// The start of its payload, as JSON text.
    pub payload_excerpt: String,
    /// When it was written.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// How often an operator replayed it.
    pub replay_count: i32,
    /// The plugin version that last handled it.
    pub projection_version: Option<String>,
    /// For a blocked event, the seq of the failed event that blocks it.
    pub blocked_by: Option<i64>,
}

/// Whether `status` may be listed; the error names the value and the choices.
pub fn check_status(status: &str) -> Result<(), String> {
    if LISTABLE.contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "`{status}` is not a status to list; use one of {}",
            LISTABLE.join(", ")
        ))
    }
}

/// One page of `projection`'s events as `query` selects them, oldest first.
pub async fn list(
    pool: &PgPool,
    projection: &str,
    query: &Query,
) -> sqlx::Result<Vec<EventSummary>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    if query.status == "blocked" {
        sqlx::query_as(BLOCKED)
            .bind(projection)
            .bind(&query.error_reason)
            .bind(&query.event_type)
            .bind(query.after_seq)
            .bind(limit)
            .bind(EXCERPT_CHARS)
            .fetch_all(pool)
            .await
    } else {
        sqlx::query_as(LIST)
            .bind(projection)
            .bind(&query.status)
            .bind(&query.error_reason)
            .bind(&query.event_type)
            .bind(query.after_seq)
            .bind(limit)
            .bind(EXCERPT_CHARS)
            .fetch_all(pool)
            .await
    }
}

/// How an operator names one event: its seq or its id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKey {
    /// `outbox_events.seq`.
    Seq(i64),
    /// `outbox_events.id`.
    Id(Uuid),
}

impl std::str::FromStr for EventKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(seq) = s.parse::<i64>() {
            return Ok(EventKey::Seq(seq));
        }
        s.parse::<Uuid>().map(EventKey::Id).map_err(|_| {
            format!("`{s}` is neither an event seq (an integer) nor an event id (a UUID)")
        })
    }
}

#[derive(sqlx::FromRow)]
struct DetailRow {
    seq: i64,
    id: Uuid,
    projection: String,
    event_type: String,
    aggregate_type: String,
    aggregate_id: String,
    payload_text: String,
    payload_bytes: i32,
    headers_text: String,
    headers_bytes: i32,
    occurred_at: chrono::DateTime<chrono::Utc>,
    created_at: chrono::DateTime<chrono::Utc>,
    status: String,
    attempts: i32,
    next_retry_at: chrono::DateTime<chrono::Utc>,
    claimed_by: Option<String>,
    lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    processing_started_at: Option<chrono::DateTime<chrono::Utc>>,
    done_at: Option<chrono::DateTime<chrono::Utc>>,
    error_reason: Option<String>,
    error: Option<String>,
    failure_kind: Option<String>,
    projection_version: Option<String>,
    replay_count: i32,
    last_replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    last_replayed_by: Option<String>,
    last_replayed_reason: Option<String>,
}

/// A JSON document as the detail carries it: the value when it came back whole, else the text
/// it was cut to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Document {
    /// The document, when it came back whole (under [`DETAIL_TEXT_CHARS`]).
    pub json: Option<serde_json::Value>,
    /// Its start, when it was too large to come back whole.
    pub truncated_text: Option<String>,
    /// Its full size as JSON text, in bytes.
    pub bytes: i32,
}

impl Document {
    fn new(text: String, bytes: i32) -> Document {
        let whole = usize::try_from(bytes).is_ok_and(|b| b == text.len());
        match whole.then(|| serde_json::from_str(&text).ok()).flatten() {
            Some(json) => Document {
                json: Some(json),
                truncated_text: None,
                bytes,
            },
            None => Document {
                json: None,
                truncated_text: Some(text),
                bytes,
            },
        }
    }
}

/// One event's whole record and its replay history.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// Its position in the outbox.
    pub seq: i64,
    /// Its id.
    pub id: Uuid,
    /// Its projection.
    pub projection: String,
    /// Its type.
    pub event_type: String,
    /// Its aggregate's type.
    pub aggregate_type: String,
    /// Its aggregate.
    pub aggregate_id: String,
    /// What the application wrote.
    pub payload: Document,
    /// Its headers.
    pub headers: Document,
    /// When it happened (the application's clock).
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// When it was written.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Its status.
    pub status: String,
    /// Attempts made since it was written or last replayed.
    pub attempts: i32,
    /// When it is due (pending).
    pub next_retry_at: chrono::DateTime<chrono::Utc>,
    /// The worker that last claimed it.
    pub claimed_by: Option<String>,
    /// Until when that claim holds (processing).
    pub lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When its latest claim began.
    pub processing_started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was applied.
    pub done_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it last failed.
    pub error_reason: Option<String>,
    /// The last failure's message (stored cut to 4 KiB).
    pub error: Option<String>,
    /// `deterministic` or `attempts_exhausted` for a failed event.
    pub failure_kind: Option<String>,
    /// The plugin version that last handled it.
    pub projection_version: Option<String>,
    /// How often an operator replayed it.
    pub replay_count: i32,
    /// When it was last replayed.
    pub last_replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who last replayed it.
    pub last_replayed_by: Option<String>,
    /// Why it was last replayed.
    pub last_replayed_reason: Option<String>,
    /// The replays and skips (dry runs included) that named it, newest first (at most 50).
    pub history: Vec<AuditEntry>,
}

/// `projection`'s event named by `key`, with its replay history, or `None` when it has none
/// such. Both reads see one snapshot.
pub async fn detail(
    pool: &PgPool,
    projection: &str,
    key: EventKey,
) -> sqlx::Result<Option<EventDetail>> {
    let (seq, id) = match key {
        EventKey::Seq(seq) => (Some(seq), None),
        EventKey::Id(id) => (None, Some(id)),
    };
    let mut tx = pool.begin().await?;
    crate::db::read_only_snapshot(&mut tx).await?;
    let row: Option<DetailRow> = sqlx::query_as(DETAIL)
        .bind(projection)
        .bind(seq)
        .bind(id)
        .bind(DETAIL_TEXT_CHARS)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(r) = row else {
        tx.commit().await?;
        return Ok(None);
    };
    let history: Vec<AuditEntry> = sqlx::query_as(HISTORY)
        .bind(projection)
        .bind(r.id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(EventDetail {
        seq: r.seq,
        id: r.id,
        projection: r.projection,
        event_type: r.event_type,
        aggregate_type: r.aggregate_type,
        aggregate_id: r.aggregate_id,
        payload: Document::new(r.payload_text, r.payload_bytes),
        headers: Document::new(r.headers_text, r.headers_bytes),
        occurred_at: r.occurred_at,
        created_at: r.created_at,
        status: r.status,
        attempts: r.attempts,
        next_retry_at: r.next_retry_at,
        claimed_by: r.claimed_by,
        lease_expires_at: r.lease_expires_at,
        processing_started_at: r.processing_started_at,
        done_at: r.done_at,
        error_reason: r.error_reason,
        error: r.error,
        failure_kind: r.failure_kind,
        projection_version: r.projection_version,
        replay_count: r.replay_count,
        last_replayed_at: r.last_replayed_at,
        last_replayed_by: r.last_replayed_by,
        last_replayed_reason: r.last_replayed_reason,
        history,
    }))
}

/// The table `projector events` prints: one line per event.
pub fn render_table(rows: &[EventSummary]) -> String {
    let mut table = vec![[
        "seq",
        "id",
        "status",
        "event_type",
        "aggregate",
        "attempts",
        "reason",
        "payload",
    ]
    .map(str::to_owned)
    .to_vec()];
    for r in rows {
        let status = match r.blocked_by {
            Some(seq) => format!("blocked by {seq}"),
            None => r.status.clone(),
        };
        // One line per event: control characters in the excerpt would break the table.
        let payload: String = r
            .payload_excerpt
            .chars()
            .take(60)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        table.push(vec![
            r.seq.to_string(),
            r.id.to_string(),
            status,
            r.event_type.clone(),
            r.aggregate_id.clone(),
            r.attempts.to_string(),
            r.error_reason.clone().unwrap_or_else(|| "-".into()),
            payload,
        ]);
    }
    super::status::aligned(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_named_by_its_seq_or_its_id_and_anything_else_is_named_back() {
        assert_eq!("42".parse::<EventKey>(), Ok(EventKey::Seq(42)));
        let id = Uuid::new_v4();
        assert_eq!(id.to_string().parse::<EventKey>(), Ok(EventKey::Id(id)));
        let err = "4x2".parse::<EventKey>().unwrap_err();
        assert!(err.contains("`4x2`"), "{err}");
    }

    #[test]
    fn a_document_cut_short_comes_back_as_text_with_its_full_size() {
        let whole = Document::new(r#"{"a": 1}"#.into(), 8);
        assert_eq!(whole.json, Some(serde_json::json!({"a": 1})));
        let cut = Document::new(r#"{"a": "#.into(), 20);
        assert_eq!(
            (cut.json, cut.truncated_text.as_deref(), cut.bytes),
            (None, Some(r#"{"a": "#), 20)
        );
    }

    #[test]
    fn only_listable_statuses_pass_and_a_wrong_one_is_named() {
        for s in LISTABLE {
            assert!(check_status(s).is_ok());
        }
        let err = check_status("broken").unwrap_err();
        assert!(err.contains("`broken`") && err.contains("blocked"), "{err}");
    }
}
