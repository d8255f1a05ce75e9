//! The projections and their plugins: the three seed projections (search index, chronicle, query cache), the `sql` capability, hot swaps, which version runs after restarts, canary rollouts, the compiled-code cache, the examples (order-totals: a counting read model, redelivered and backfilled), the cost of a plugin call.
//!
//! One test binary per area: each file below is one scenario family, sharing `common` (the
//! throwaway Postgres cluster, child hosts, plugins built once per binary).

#[path = "../common/mod.rs"]
mod common;

mod canary;
mod chronicle_entries;
mod compiled_cache;
mod examples;
mod hot_swap;
mod order_totals;
mod plugin_cost;
mod plugin_sdk;
mod query_cache;
mod search_index;
mod sql_capability;
mod version_rule;
