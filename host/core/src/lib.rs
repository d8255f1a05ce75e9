//! projector's plain data, shared by every layer above it: what a claimed batch and its events
//! are, the verdict recorded for each event, the retry policy, and what one projection is
//! (name, plugin, ordering, tuning, grants).
//!
//! Invariants:
//! - No I/O: nothing here opens a connection, a file or a socket. (`sqlx` is a dependency only
//!   so that its errors convert into [`Error`] with `?` in the layers above.)
//! - Nothing here depends on another projector crate.
#![deny(missing_docs)]

pub mod backoff;
pub mod error;
pub mod outbox;
pub mod spec;

pub use error::{Error, Result};
