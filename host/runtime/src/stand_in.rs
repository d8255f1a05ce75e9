//! Capability stand-ins: how the authoring test kit (`projector plugin test`, see
//! `projector_authoring::testkit`) swaps the capabilities that reach outside the sandbox (`log`,
//! `sql`, `search`) for in-memory ones while keeping everything else of the runtime: loading,
//! validation, limits, bisection on traps, reason sanitising.
//!
//! Invariant: `projector run` never sets a stand-in. When a loaded plugin has one, every call of
//! those capabilities goes to it and nothing reaches Postgres, the search cluster or the host's
//! log; `config` still answers from the projection's configuration map.

pub use super::bindings::projector::plugin::log::Level;
pub use super::search::{validate as validate_search, Action, BulkError, ItemResult, Operation};
pub use super::sql::{ErrorKind as SqlErrorKind, SqlError};

/// The in-memory side of the capabilities a test kit provides.
pub trait StandIn: Send + Sync {
    /// `log.log`.
    fn log(&self, level: Level, event_id: Option<&str>, message: &str);
    /// `sql.query`: rows as a JSON array of objects.
    fn sql_query(&self, statement: &str, params: &str) -> Result<String, SqlError>;
    /// `sql.execute`: rows affected.
    fn sql_execute(&self, statement: &str, params: &str) -> Result<u64, SqlError>;
    /// `search.bulk`: one result per operation.
    fn search_bulk(&self, operations: &[Operation]) -> Result<Vec<ItemResult>, BulkError>;
}
