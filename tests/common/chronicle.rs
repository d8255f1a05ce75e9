//! The chronicle application of seed 004, shared by the scenarios that project it: its tables,
//! what it writes (a chronicle event and its outbox row in one statement), and the read model
//! as a fold of its events.

use serde_json::Value;

/// `chronicle_events` (source of truth) and `chronicle_entries` (read model).
pub const CHRONICLE_SCHEMA: &str = include_str!("../../examples/migrations/0001_chronicle.sql");

/// Creates the chronicle's tables in the database `pool` is on.
pub async fn create_chronicle_tables(pool: &sqlx::PgPool) {
    sqlx::raw_sql(CHRONICLE_SCHEMA)
        .execute(pool)
        .await
        .expect("create the chronicle tables");
}

/// Changes `from..from+n` by the application over `entities` books, each in one statement: the
/// chronicle event and its outbox row (with the seeds' envelope in the payload).
pub fn chronicle_writes(from: i64, n: i64, entities: i64) -> String {
    format!(
        "WITH changes AS (
            INSERT INTO chronicle_events (actor_user_id, entity_type, entity_id, event_type, before, after,
                                          occurred_at, request_id, reason)
            SELECT 'user-' || (i % 7), 'book', 'book-' || (i % {entities}), 'BookRenamed',
                   jsonb_build_object('title', 'v' || (i - 1)), jsonb_build_object('title', 'v' || i),
                   timestamptz '2025-11-08 10:00:00+00' + make_interval(secs => i), 'req-' || i,
                   CASE WHEN i % 3 = 0 THEN 'typo' END
            FROM generate_series({from}, {to}) AS i
            RETURNING *
        )
        INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
        SELECT 'chronicle', 'book.renamed', entity_type, entity_type || ':' || entity_id,
               jsonb_build_object('chronicleEventId', id, 'actorUserId', actor_user_id,
                                  'entityType', entity_type, 'entityId', entity_id, 'eventType', event_type,
                                  'before', before, 'after', after, 'occurredAt', occurred_at,
                                  'requestId', request_id, 'reason', reason,
                                  'tenantId', 't-1', 'correlationId', request_id, 'source', 'test')
        FROM changes ORDER BY occurred_at",
        to = from + n - 1
    )
}

/// The read model, row by row.
pub const CHRONICLE_ENTRIES: &str =
    "SELECT id::text, actor_user_id, entity_type, entity_id, event_type, summary,
            before, after, occurred_at, request_id, reason
     FROM chronicle_entries ORDER BY occurred_at, id";

/// What the read model must be: the fold of `chronicle_events` (one entry per event, the
/// plugin's summary `actor event_type entity_type entity_id`).
pub const CHRONICLE_FOLD: &str =
    "SELECT id::text, actor_user_id, entity_type, entity_id, event_type,
            actor_user_id || ' ' || event_type || ' ' || entity_type || ' ' || entity_id,
            before, after, occurred_at, request_id, reason
     FROM chronicle_events ORDER BY occurred_at, id";

/// A row of [`CHRONICLE_ENTRIES`] or [`CHRONICLE_FOLD`].
pub type ChronicleEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<Value>,
    Option<Value>,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
    Option<String>,
);

/// The rows `query` returns.
pub async fn chronicle_rows(pool: &sqlx::PgPool, query: &str) -> Vec<ChronicleEntry> {
    sqlx::query_as(query).fetch_all(pool).await.unwrap()
}
