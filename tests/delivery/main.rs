//! Delivery: claiming, leases and reclaim, ordering (also at scale and under contention), retries, traps, shutdown, housekeeping shared by hosts, and what claims and settles cost.
//!
//! One test binary per area: each file below is one scenario family, sharing `common` (the
//! throwaway Postgres cluster, child hosts, plugins built once per binary).

#[path = "../common/mod.rs"]
mod common;

mod claim_cost;
mod claiming;
mod contention;
mod delivery;
mod harness;
mod housekeeping;
mod leases;
mod ordering;
mod ordering_at_scale;
mod retries;
mod shutdown;
mod traps;
