//! projector: a transactional-outbox projection host.
//!
//! Applications write events into `outbox_events` in the same transaction as their business
//! change. projector claims them with leases, hands each batch to the projection's plugin (a
//! sandboxed WebAssembly component implementing `wit/plugin.wit`), and records what the plugin
//! answered: `success` → `done`, `transient` → retry with backoff (then `failed` once attempts
//! are exhausted), `deterministic` → `failed`. Everything that is the same for every projection
//! lives here; everything specific to one projection lives in its plugin.
//!
//! Where things are:
//! - [`settings`]: `OUTBOX_*` settings from flags, environment and TOML, validated once.
//! - [`outbox`]: the delivery state machine (claiming, settling outcomes, leases and reclaim,
//!   the retry policy), each transition a SQL statement kept next to the Rust that runs it.
//! - [`plugin`]: the WebAssembly runtime, the capabilities a plugin may import, sandbox limits.
//! - [`sql_roles`]: the database roles and grants behind the `sql` capability.
//! - [`worker`]: one claim → call → settle loop.
//! - [`rebuild`]: rebuilding a read model from its source of truth (direct, through the outbox,
//!   or zero-downtime into shadow tables).
//! - [`metrics`]: every metric the host exports. [`http`]: `/healthz`, `/readyz`, `/metrics` and
//!   the admin API.
//! - [`service`]: `projector run`: wiring, wake-ups, signals, shutdown.
//! - [`authoring`]: `projector plugin new|test`, for plugin authors (scaffold, test kit).
//! - [`telemetry`]: the log subscriber, OpenTelemetry trace export, span and attribute names.
//! - [`bench`]: `projector bench`: throughput and latency against the raw ceilings.
#![deny(missing_docs)]

pub mod authoring;
pub mod bench;
pub mod cli;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod plugin;
pub mod rebuild;
pub mod registry;
pub mod service;
pub mod settings;
pub mod sql_roles;
pub mod telemetry;
pub mod worker;

pub use error::{Error, Result};
