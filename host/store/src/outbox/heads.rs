//! Heads (migration 0007): one row per projection and aggregate with unfinished events, the
//! index the ordered claim walks (`claim_ordered.sql`).
//!
//! Invariant: every aggregate with an unfinished event has a head whose `next_seq` is at most
//! that event's seq. Heads are added by the outbox's insert trigger and moved forward or removed
//! by the settle, each under a `version` check against inserts racing it (see the migration). A
//! head can therefore only ever be *extra*: left behind when the events it stood for were
//! finished other than by a settle (an operator skip, a rebuild superseding them, a hand-made
//! UPDATE or DELETE), or when a settle's check lost a race. An extra head costs each ordered
//! claim one probe, never an event; [`sweep_empty`] removes them.

use sqlx::PgPool;

/// Removes empty heads among the `limit` oldest of `projection` that the ordered claim walks (not
/// blocked; it walks the oldest first, so that is where leftovers cost it), under the same `version` check as the
/// settle, and like the settle without waiting for a head an inserting transaction holds.
/// Returns how many it removed.
const SWEEP_EMPTY_SQL: &str = "\
WITH oldest AS (
    SELECT h.aggregate_id, h.next_seq, h.version
    FROM outbox_heads h
    WHERE h.projection = $1 AND NOT h.blocked
    ORDER BY h.next_seq
    LIMIT $2
),
empty AS (
    SELECT o.aggregate_id, o.version
    FROM oldest o
    WHERE NOT EXISTS (
        SELECT 1 FROM outbox_events e
        WHERE e.projection = $1 AND e.aggregate_id = o.aggregate_id AND e.seq >= o.next_seq
          AND e.status <> 'done' AND e.status <> 'skipped')
),
held AS (
    SELECT e.aggregate_id
    FROM (SELECT * FROM empty ORDER BY aggregate_id) e
    CROSS JOIN LATERAL (
        SELECT h.version
        FROM outbox_heads h
        WHERE h.projection = $1 AND h.aggregate_id = e.aggregate_id
        FOR UPDATE SKIP LOCKED
    ) l
    WHERE l.version = e.version
)
DELETE FROM outbox_heads h
USING held l
WHERE h.projection = $1 AND h.aggregate_id = l.aggregate_id";

/// How many of the oldest heads one sweep looks at.
pub const SWEEP_LIMIT: i64 = 1000;

/// See [`SWEEP_EMPTY_SQL`].
pub async fn sweep_empty(pool: &PgPool, projection: &str, limit: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(SWEEP_EMPTY_SQL)
        .bind(projection)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
}
