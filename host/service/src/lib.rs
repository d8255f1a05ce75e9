//! projector's service: everything `projector run` is, above the database statements
//! (`projector-store`) and the plugin runtime (`projector-runtime`).
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
//! - [`worker`]: one claim → call → settle loop.
//! - [`plugin_versions`]: each projection's active plugin version, hot swaps and rollbacks.
//! - [`rebuild`]: rebuilding a read model from its source of truth (direct, through the outbox,
//!   or zero-downtime into shadow tables).
//! - [`metrics`]: every metric the host exports. [`http`]: `/healthz`, `/readyz`, `/metrics` and
//!   the admin API.
//! - [`run`]: `projector run`: wiring, wake-ups, signals, shutdown.
//! - [`telemetry`]: the log subscriber, OpenTelemetry trace export, span and attribute names.
#![deny(missing_docs)]

pub mod http;
pub mod metrics;
pub mod plugin_versions;
pub mod rebuild;
pub mod run;
pub mod settings;
pub mod telemetry;
pub mod worker;

pub use projector_core::{Error, Result};
