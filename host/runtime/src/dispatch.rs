//! One batch through a plugin, the one way the claim loops and the rebuilds both run it.
//!
//! Invariants:
//! - The host answers first for the events the plugin must not see ([`crate::admission`]); the
//!   plugin sees the others in their claimed order, and the verdicts come back one per claimed
//!   event, in that order.
//! - The plugin call runs on a blocking thread (it may wait for Postgres or the search cluster
//!   while the runtime's threads go on).
//! - A `sql` projection's batch runs inside the transaction it is given
//!   ([`Handler::handle_in_transaction`]), which comes back with the verdicts for the caller to
//!   settle on and commit, or as the error that made it unusable; any other projection's batch
//!   runs without one ([`Handler::handle`]).
//! - A panic of the handler itself (a host bug, not a plugin trap) loses the handler and the
//!   transaction, and is reported as such: the caller decides what the batch's events become.

use crate::admission::Admitted;
use crate::{CallReport, Handler};
use projector_core::outbox::{Claim, Verdict};
use projector_core::spec::Tuning;
use std::sync::Arc;
use std::time::Duration;

/// A `sql` projection's batch transaction, on its own role's connection.
pub type Transaction = sqlx::Transaction<'static, sqlx::Postgres>;

/// What became of one batch.
pub struct Dispatched {
    /// The handler, to reuse for the next batch; `None` after it panicked.
    pub handler: Option<Handler>,
    /// One verdict per claimed event, in order; empty after a panic.
    pub verdicts: Vec<Verdict>,
    /// What went wrong inside the plugin calls.
    pub report: CallReport,
    /// The transaction given, back (or the error that made it unusable); `None` when none was
    /// given or after a panic.
    pub tx: Option<sqlx::Result<Transaction>>,
    /// The panic's message, when the handler panicked.
    pub panicked: Option<String>,
}

/// Runs `claim` through `handler` within `budget`: admission under `tuning`, then the plugin,
/// in `tx` when one is given. `supervisor` (a pool on the host's own role) may end a stalled
/// transaction's backend.
pub async fn dispatch(
    handler: Handler,
    claim: &Arc<Claim>,
    tuning: &Tuning,
    tx: Option<Transaction>,
    budget: Duration,
    supervisor: &sqlx::PgPool,
) -> Dispatched {
    let admitted = Admitted::split(claim, tuning, &handler.plugin().info.event_types);
    let shared = admitted.claim.clone();
    let supervisor = supervisor.clone();
    let mut handler = handler;
    let called = tokio::task::spawn_blocking(move || match tx {
        _ if shared.events.is_empty() => (handler, Vec::new(), CallReport::default(), tx.map(Ok)),
        Some(tx) => {
            let (verdicts, report, tx) =
                handler.handle_in_transaction(&shared, tx, budget, &supervisor);
            (handler, verdicts, report, Some(tx))
        }
        None => {
            let (verdicts, report) = handler.handle(&shared, budget);
            (handler, verdicts, report, None)
        }
    })
    .await;
    match called {
        Ok((handler, verdicts, report, tx)) => Dispatched {
            handler: Some(handler),
            verdicts: admitted.merge(verdicts),
            report,
            tx,
            panicked: None,
        },
        Err(e) => Dispatched {
            handler: None,
            verdicts: Vec::new(),
            report: CallReport::default(),
            tx: None,
            panicked: Some(e.to_string()),
        },
    }
}
