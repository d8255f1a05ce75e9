//! The harness that drives the `projector` binary from outside, shared by the integration tests
//! (`tests/common`) and `projector bench`: a `projector run` as a child process with its own port
//! and log ([`child`]), one-shot commands ([`run_once`]), free ports ([`free_port`]), a process's
//! memory as `/proc` reports it ([`memory`]), and database URLs ([`with_database`]).
//!
//! Invariants every caller can rely on:
//! - A child host never outlives its handle: dropping a [`ChildHost`] kills and reaps it, and a
//!   child gets SIGKILL when the thread that spawned it dies, so even a caller killed outright
//!   leaves no host behind.
//! - A child's environment holds only what its caller passed: the caller's own `OUTBOX_*`,
//!   `ELASTIC_*`, `OTEL_*`, `DATABASE_URL` and `RUST_LOG` are removed before the caller's
//!   settings are added.
//! - A port handed out by [`free_port`] is never handed out again in the same process.
//! - Nothing here names a binary: callers pass the path of the `projector` to run
//!   (`env!("CARGO_BIN_EXE_projector")` in tests, `std::env::current_exe()` in the bench).
//! - Nothing here panics on a child's misbehaviour: every failure is an [`Error`] that carries the
//!   end of the child's log, so the bench can report it and a test can panic with it.
//!
//! ```no_run
//! use projector_test_support::RunCommand;
//! use std::time::Duration;
//!
//! let mut host = RunCommand::new("target/debug/projector")
//!     .label("example")
//!     .args(["--config", "projections.toml"])
//!     .env("DATABASE_URL", "postgres://postgres@127.0.0.1/app")
//!     .spawn()?;
//! host.wait_ready(Duration::from_secs(60))?;
//! println!("listening on {}", host.url("/metrics"));
//! host.stop(Duration::from_secs(60))?; // SIGTERM, then a clean exit or an error
//! # Ok::<(), projector_test_support::Error>(())
//! ```
#![deny(missing_docs)]

pub mod child;
mod db_url;
mod error;
pub mod memory;
mod port;

pub use child::{projector_command, run_once, stop_all, ChildHost, RunCommand};
pub use db_url::with_database;
pub use error::Error;
pub use port::free_port;
