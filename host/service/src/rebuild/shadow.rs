//! Zero-downtime rebuilds of sql projections: catch-up and the switch. The shadow tables
//! themselves (building the copies, dropping them, moving them in) are
//! [`projector_store::rebuilds::shadow`].
//!
//! Invariants:
//! - Catch-up: events written after the rebuild's snapshot were not in the source rows; those
//!   the hosts applied to the old model meanwhile (`done`) are applied to the new one too, in
//!   seq order, each exactly once. Those still unfinished are left to the hosts, which apply them
//!   to whatever model is live when they run.
//! - The switch is one transaction: with the projection paused and nothing of it in flight, the
//!   live tables are locked, a last check finds nothing new to catch up, the old tables are
//!   moved out and dropped, the copies moved in, and the unfinished events the new model already
//!   contains (written in the snapshot) are marked done ([`projector_store::outbox::operator::supersede_in_snapshot`]).
//!   A reader blocked on the lock resumes on the new table; no reader sees a partial model.

use super::{Applier, Report};
use crate::{Error, Result};
use projector_store::rebuilds::shadow::Shadow;
use sqlx::PgPool;

/// Makes `shadow`'s copies live (see the module doc); the projection is paused by `pauser`.
pub(super) async fn switch(
    shadow: &Shadow,
    pool: &PgPool,
    applier: &mut Applier,
    snapshot: &str,
    applied: &mut Vec<i64>,
    report: &mut Report,
    pauser: &str,
) -> Result<()> {
    let projection = shadow.projection();
    let patience = applier.spec.tuning.max_processing + applier.spec.tuning.lease;
    for _attempt in 0..5 {
        // Batches claimed before the pause finish (or their lease runs out).
        super::wait_until_nothing_in_flight(pool, projection, patience).await?;
        super::catch_up(pool, projection, applier, snapshot, applied, report).await?;

        let mut tx = pool.begin().await?;
        shadow.lock_live(&mut tx).await?;
        // Writers of the old tables have committed (their outcomes with them): anything
        // they did since the last round means another round.
        let late = projector_store::outbox::operator::done_after_snapshot(
            &mut tx, projection, snapshot, applied,
        )
        .await?;
        let in_flight = projector_store::outbox::operator::in_flight(&mut tx, projection).await?;
        if !late.is_empty() || in_flight > 0 {
            tx.rollback().await?;
            continue;
        }
        shadow.swap_in(&mut tx).await?;
        super::finish_switch(&mut tx, projection, snapshot, pauser, report).await?;
        tx.commit().await?;
        report.switched = true;
        return Ok(());
    }
    Err(Error::Other(anyhow::anyhow!(
        "`{projection}` kept changing while switching (5 attempts); the old model stays"
    )))
}
