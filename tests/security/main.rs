//! Hostile input and hostile plugins: what a plugin or a caller without good intentions can do, and that it cannot (sandbox, limits, `sql`, admin API, configuration).
//!
//! One test binary per area: each file below is one scenario family, sharing `common` (the
//! throwaway Postgres cluster, child hosts, plugins built once per binary).

#[path = "../common/mod.rs"]
mod common;

mod admin_api_abuse;
mod config_errors;
mod hostile_input;
mod hostile_limits;
mod hostile_sql;
mod least_privilege;
mod sandbox;
