//! projector's PostgreSQL side: the migrations, the outbox state machine's statements (claim,
//! settle, leases and reclaim, heads, retention, status, operator transitions), the plugin
//! versions table ([`versions`]), the rebuilds' records and shadow tables ([`rebuilds`]), the
//! database roles behind the `sql` capability ([`sql_roles`]), and the NOTIFY channels.
//!
//! Invariants:
//! - Every SQL statement the host runs is here, in a `.sql` file next to the module that runs it
//!   (loaded with `include_str!`, its leading comment saying what it does and what its
//!   parameters are), behind a function with typed parameters and rows. The only SQL built in
//!   Rust is DDL naming roles, schemas or tables (identifiers cannot be parameters), with every
//!   identifier quoted: role provisioning ([`sql_roles`]) and shadow tables
//!   ([`rebuilds::shadow`]). Crates above this one hold no SQL (a rebuild's source query comes
//!   from the configuration and is only passed through).
//! - Every write to `outbox_events.status` is a statement in [`outbox`]; nothing above this
//!   crate writes it. (An outbox-mode rebuild inserts new events, as an application does:
//!   [`rebuilds::emit`].)
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
