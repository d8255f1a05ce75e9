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
//! - [`plugin_versions`]: each projection's active plugin version, hot swaps and rollbacks,
//!   canary rollouts. [`version_rule`]: which version a starting host runs. [`canary`]: a canary
//!   in the claim loop (the split of a batch by aggregate, its counters, the decision rule).
//! - [`rebuild`]: rebuilding a read model from its source of truth (direct, through the outbox,
//!   or zero-downtime into shadow tables).
//! - [`metrics`]: every metric the host exports. [`http`]: `/healthz`, `/readyz`, `/metrics` and
//!   the admin API; [`same_origin`]: its refusal of cross-site requests. [`console`]: the
//!   operator console at `/ui`, with [`history`] the in-memory lag and throughput it charts.
//! - [`run`]: `projector run`: wiring, wake-ups, signals, shutdown.
//! - [`telemetry`]: the log subscriber, OpenTelemetry trace export, span and attribute names.
#![deny(missing_docs)]

pub mod canary;
pub mod console;
pub mod history;
pub mod http;
pub mod metrics;
pub mod plugin_versions;
pub mod rebuild;
pub mod run;
pub mod same_origin;
pub mod settings;
pub mod telemetry;
pub mod version_rule;
pub mod worker;

pub use projector_core::{Error, Result};

#[cfg(test)]
mod tests {
    /// SQL lives in projector-store (one `.sql` file per statement, typed functions around
    /// them): the service calls those functions and sends no statement of its own.
    #[test]
    fn the_service_holds_no_sql() {
        fn check(dir: &std::path::Path) {
            for entry in std::fs::read_dir(dir).expect("readable src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    check(&path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("readable");
                // The code, without its tests (this one names what it looks for).
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for call in ["sqlx::query", "sqlx::raw_sql", "query_as(", "query_scalar("] {
                    let found = code
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .any(|l| l.contains(call));
                    assert!(
                        !found,
                        "{} calls {call}: put the statement in projector-store",
                        path.display()
                    );
                }
            }
        }
        check(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    }
}
