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
//!
//! A head also carries `claimed_until` (migration 0013): the end of the lease the last claim of
//! its aggregate gave, set by that claim and cleared by whatever takes the events out of
//! `processing`. The walk passes a head marked in the future without probing its events. It is
//! a hint too: a mark missing costs a probe, and a mark left behind (a dead host's, or one a
//! settle could not clear because an insert held the head, which clears it itself) holds the
//! aggregate back no longer than that lease, after which its run is reclaimed as before.

use sqlx::PgPool;

const SWEEP_EMPTY_SQL: &str = include_str!("heads_sweep_empty.sql");

/// How many of the oldest heads one sweep looks at.
pub const SWEEP_LIMIT: i64 = 1000;

/// Removes empty heads among the `limit` oldest of `projection` that the ordered claim walks (not
/// blocked; it walks the oldest first, so that is where leftovers cost it), under the same
/// `version` check as the settle, and like the settle without waiting for a head an inserting
/// transaction holds. Returns how many it removed.
pub async fn sweep_empty(pool: &PgPool, projection: &str, limit: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(SWEEP_EMPTY_SQL)
        .bind(projection)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
}
