//! Operating the host: the admin API, the console (in a real browser), listing failed events, operator transitions, rebuilds, monitoring rules and dashboards, tracing, plugin-author tools, the bench smoke run, the service packaging (systemd, Kubernetes) and the frictions a new operator met.
//!
//! One test binary per area: each file below is one scenario family, sharing `common` (the
//! throwaway Postgres cluster, child hosts, plugins built once per binary).

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod bench_smoke;
mod code_shape;
mod console;
mod events;
mod monitoring;
mod operations;
mod operator_frictions;
mod packaging;
mod plugin_authoring;
mod rebuild;
mod tracing;
