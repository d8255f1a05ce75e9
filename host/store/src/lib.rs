//! projector's PostgreSQL side: the migrations, the outbox state machine's statements (claim,
//! settle, leases and reclaim, heads, retention, status, operator transitions), the database
//! roles behind the `sql` capability, and the NOTIFY channels.
//!
//! Invariants:
//! - Every write to `outbox_events.status` is a statement in [`outbox`]; nothing above this
//!   crate writes it.
//! - Every NOTIFY goes through [`notify`]; every pause and resume through
//!   [`outbox::operator`].
//! - Depends on `projector-core` only.
#![deny(missing_docs)]

pub mod db;
pub mod notify;
pub mod outbox;
pub mod rebuilds;
pub mod sql_roles;
pub mod versions;

pub use projector_core::{Error, Result};
