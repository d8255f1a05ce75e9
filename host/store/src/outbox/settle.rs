//! Settling: where a plugin's outcome becomes a state change (see `settle.sql`).
//!
//! success → `done`; transient → `pending` with a backoff, or `failed`
//! (`failure_kind = 'attempts_exhausted'`) when the attempts are used up; deterministic →
//! `failed` (`failure_kind = 'deterministic'`). All outcomes of a batch commit together, and only
//! for rows the claim still holds.

use super::{backoff, Claim, Verdict};
use projector_core::spec::Tuning;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

/// The settle statement. Also installed as the body of the `projector_settle` function that
/// `sql` projections call from their own role (see `crate::sql_roles`).
pub const SETTLE_SQL: &str = include_str!("settle.sql");

/// How a settle reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The statement itself, on the host's own connection.
    Direct,
    /// Through `projector_settle(...)` (the same statement as a SECURITY DEFINER function), on a
    /// connection logged in as a projection's restricted role.
    Function,
}

const SETTLE_FUNCTION_CALL: &str = include_str!("settle_function_call.sql");

/// What one settled row became.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The row.
    pub seq: i64,
    /// The new status: `done`, `pending` (retry scheduled) or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When status is `pending`: the delay before the retry.
    pub retry_in: Option<Duration>,
}

/// Records `verdicts` (one per event of `claim`, same order) on the pool.
pub async fn settle(
    pool: &PgPool,
    claim: &Claim,
    verdicts: &[Verdict],
    tuning: &Tuning,
    version: &str,
) -> sqlx::Result<Vec<Settled>> {
    let mut conn = pool.acquire().await?;
    settle_on(&mut conn, claim, verdicts, tuning, version, Route::Direct).await
}

/// Records `verdicts` on `conn` (which may be inside a transaction the caller commits).
pub async fn settle_on(
    conn: &mut PgConnection,
    claim: &Claim,
    verdicts: &[Verdict],
    tuning: &Tuning,
    version: &str,
    route: Route,
) -> sqlx::Result<Vec<Settled>> {
    assert_eq!(
        claim.events.len(),
        verdicts.len(),
        "one verdict per claimed event"
    );
    let n = verdicts.len();
    let (mut seqs, mut kinds, mut reasons, mut messages, mut delays) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (event, verdict) in claim.events.iter().zip(verdicts) {
        seqs.push(event.seq);
        let (kind, reason, message) = match verdict {
            Verdict::Success => ("success", None, None),
            Verdict::Transient { reason, message } => {
                ("transient", Some(reason.clone()), Some(message.clone()))
            }
            Verdict::Deterministic { reason, message } => {
                ("deterministic", Some(reason.clone()), Some(message.clone()))
            }
            Verdict::Deferred => ("deferred", None, None),
        };
        kinds.push(kind);
        reasons.push(reason);
        messages.push(message);
        let delay = match verdict {
            Verdict::Transient { .. } => {
                backoff::retry_delay(event.attempt, tuning.base_backoff, tuning.max_backoff)
                    .as_secs_f64()
            }
            _ => 0.0,
        };
        delays.push(delay);
    }
    let statement = match route {
        Route::Direct => SETTLE_SQL,
        Route::Function => SETTLE_FUNCTION_CALL,
    };
    let rows: Vec<(i64, String, i32, String, f64)> = sqlx::query_as(statement)
        .bind(claim.batch_id)
        .bind(&seqs)
        .bind(&kinds)
        .bind(&reasons)
        .bind(&messages)
        .bind(&delays)
        .bind(tuning.max_attempts)
        .bind(version)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, status, attempts, _verdict, delay)| Settled {
            retry_in: (status == "pending").then(|| Duration::from_secs_f64(delay)),
            seq,
            status,
            attempts,
        })
        .collect())
}
