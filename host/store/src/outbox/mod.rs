//! The outbox delivery state machine. Every transition is one SQL statement in this directory,
//! run by the Rust function next to it; nothing else in the host writes `status`. The values
//! the transitions carry (claimed events, verdicts, the retry policy) are plain data in
//! `projector_core`.
//!
//! The state model is drawn in the README ("Delivery states"): pending → processing →
//! done | pending-with-retry | failed, plus release at shutdown and the operator transitions
//! ([`operator`]): replay (failed → pending), skip (failed → skipped), pause/resume.
//!
//! Invariants kept here:
//! - **Claiming** ([`claim`]) takes due `pending` rows and `processing` rows whose lease expired
//!   (stuck work, reclaimed) with `FOR UPDATE SKIP LOCKED`, sets a fresh `claim_batch_id` and a
//!   lease, and counts the attempt. With per-aggregate ordering a row is claimable only when no
//!   earlier row of its projection and aggregate is unfinished (not `done` or `skipped`) outside
//!   its own batch, so one batch at a time holds an aggregate, and a `failed` event blocks the
//!   ones after it. The ordered claim finds the aggregates through `outbox_heads` (migration
//!   0007: one row per aggregate with unfinished events, kept by triggers on `outbox_events` for
//!   every writer), so it costs O(batch) whatever the skew. A batch holds one event per aggregate,
//!   or a run of up to `events_per_aggregate` consecutive ones.
//!   Ordered claims of a projection take turns on every host ([`claim::take_turn`], migration
//!   0011): each starts after the one before it committed, so no two see the same candidates.
//!   A claim marks the heads of the aggregates it took in flight until their lease ends
//!   (`claimed_until`, migration 0013), so the claims after it pass those aggregates with one
//!   read instead of probing their events; the mark is only a hint (the claim still decides from
//!   the events), cleared by whatever takes the events out of `processing`, and it ends with the
//!   lease, when a dead host's run is reclaimed. The claim's transaction commits without
//!   waiting for its WAL flush: a claim lost in a crash is a reclaim, never a lost outcome (the
//!   settle commits synchronously, and its flush covers the claim's WAL before it).
//! - **Runs** are settled up to their first non-success (`projector_core::outbox::defer_after_failures`): the rest of
//!   the aggregate's events in the batch go back to `pending` untried, their attempt given back.
//! - **Fencing** ([`settle`], [`lease`]): every write after the claim is conditional on
//!   `claim_batch_id` still being ours and `status = 'processing'`. A worker that lost its lease
//!   changes nothing.
//! - **One transaction per batch** for all outcomes of a batch ([`settle`]).
//! - **Retries** (`projector_core::backoff`): exponential with jitter, between the base and max backoff.
//! - **Retention** ([`retention`]) deletes only old `done` rows; [`status`] only reads.

pub mod claim;
pub mod events;
pub mod heads;
pub mod lease;
pub mod operator;
pub mod retention;
pub mod settle;
pub mod status;

pub use projector_core::backoff;
pub use projector_core::outbox::*;
