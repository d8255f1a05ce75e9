//! Typed access to the `sql` capability, and the one mapping of database errors to outcomes.
//!
//! Parameters are any `impl Serialize` that serializes to a JSON array: a tuple
//! (`&(id, title, seq)`), a `Vec`, or a `serde_json::json!([...])`. Each element binds `$1`,
//! `$2`, ... as the host does (null, bool, int8, float8, text; objects and arrays as jsonb); cast
//! in SQL for other types (`$1::uuid`). Rows deserialize into any `T: DeserializeOwned`, one
//! object per row keyed by column name: a `#[derive(Deserialize)]` struct, or
//! `serde_json::Value`.
//!
//! A failed call returns an [`Error`]; `?` turns it into the event's [`Outcome`] in a function
//! returning `Result<_, Outcome>`.
//!
//! [`apply_once`] is the idempotency pattern for effects that are not upserts (a running total,
//! a counter): the event id goes into an applied-events table in the same transaction as the
//! effect, and the effect runs only when that id is new. Invariant: the id and the effect
//! commit together or not at all (the host runs each event under a savepoint it rolls back
//! unless the outcome is `success`), so "recorded as applied" means "applied", exactly once per
//! sink, however often the event is delivered.

use crate::bindings::projector::plugin::sql as wit;
use crate::{deterministic, reason, transient, Outcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

pub use wit::{ErrorKind, SqlError};

/// Why a statement did not run, or its rows did not convert.
#[derive(Debug, Clone)]
pub enum Error {
    /// The database refused the statement.
    Sql(SqlError),
    /// The parameters do not serialize to JSON (a plugin bug).
    Params(String),
    /// The rows do not deserialize into the type asked for (a plugin bug).
    Rows(String),
}

/// Runs one statement in the batch's transaction and returns the number of rows it affected.
pub fn execute(statement: &str, params: &impl Serialize) -> Result<u64, Error> {
    wit::execute(statement, &json(params)?).map_err(Error::Sql)
}

/// Runs one statement in the batch's transaction and returns its rows as `T`s.
pub fn query<T: DeserializeOwned>(
    statement: &str,
    params: &impl Serialize,
) -> Result<Vec<T>, Error> {
    let rows = wit::query(statement, &json(params)?).map_err(Error::Sql)?;
    serde_json::from_str(&rows).map_err(|e| Error::Rows(format!("rows of `{statement}`: {e}")))
}

/// Runs `effect` for event `event_id` only if this sink has not applied that event before, and
/// records that it has: `INSERT INTO <applied_table> (event_id) VALUES ($1::uuid) ON CONFLICT DO
/// NOTHING`, then `effect` when the insert added the row. `Ok(Some(value))`: applied now;
/// `Ok(None)`: already applied, nothing ran (a redelivery, a replay, a rebuild over the live
/// model).
///
/// `applied_table` needs a unique `event_id uuid` column (e.g. `event_id uuid PRIMARY KEY,
/// applied_at timestamptz NOT NULL DEFAULT now()`), granted to the projection with the tables
/// the effect writes. Both run in the batch's transaction, so a failed effect (its error turned
/// into the event's outcome) rolls the id back with it and a later delivery applies the event.
///
/// ```ignore
/// fn project(event: &Event) -> Result<Outcome, Outcome> {
///     let order: Order = serde_json::from_str(&event.payload)
///         .map_err(|e| deterministic(reason::BAD_PAYLOAD, e.to_string()))?;
///     sql::apply_once("order_totals_applied", &event.id, || {
///         sql::execute(
///             "INSERT INTO order_totals (customer_id, total_cents) VALUES ($1, $2)
///              ON CONFLICT (customer_id) DO UPDATE
///              SET total_cents = order_totals.total_cents + EXCLUDED.total_cents",
///             &(&order.customer_id, order.amount_cents),
///         )
///     })?;
///     Ok(success())
/// }
/// ```
pub fn apply_once<T, E: From<Error>>(
    applied_table: &str,
    event_id: &str,
    effect: impl FnOnce() -> Result<T, E>,
) -> Result<Option<T>, E> {
    if !is_table_name(applied_table) {
        return Err(Error::Params(format!(
            "apply_once: `{applied_table}` is not a table name (lowercase letters, digits and `_`, \
             optionally `schema.` before it)"
        ))
        .into());
    }
    let recorded = execute(
        &format!("INSERT INTO {applied_table} (event_id) VALUES ($1::uuid) ON CONFLICT DO NOTHING"),
        &(event_id,),
    )?;
    if recorded == 0 {
        return Ok(None);
    }
    effect().map(Some)
}

/// `name` or `schema.name`, each an unquoted lowercase SQL identifier: what [`apply_once`] may
/// put into its statement text.
fn is_table_name(name: &str) -> bool {
    let ident = |part: &str| {
        part.len() <= 63
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(table), None, None) => ident(table),
        (Some(schema), Some(table), None) => ident(schema) && ident(table),
        _ => false,
    }
}

fn json(params: &impl Serialize) -> Result<String, Error> {
    serde_json::to_string(params).map_err(|e| Error::Params(e.to_string()))
}

impl Error {
    /// What the error means for the event. Retrying helps with serialization failures and
    /// deadlocks, timeouts and lost connections; not with a missing privilege, nor with a value
    /// Postgres refuses as data (SQLSTATE class 22: a malformed timestamp, a number out of
    /// range), which is the payload's fault, nor with anything else.
    pub fn outcome(&self) -> Outcome {
        let message = self.to_string();
        let Error::Sql(e) = self else {
            return deterministic(reason::SQL_ERROR, message);
        };
        match e.kind {
            ErrorKind::SerializationFailure => transient(reason::SQL_SERIALIZATION, message),
            ErrorKind::Timeout => transient(reason::SQL_TIMEOUT, message),
            ErrorKind::Connection => transient(reason::SQL_CONNECTION, message),
            ErrorKind::PermissionDenied => deterministic(reason::SQL_PERMISSION, message),
            ErrorKind::Other if e.code.starts_with("22") => {
                deterministic(reason::BAD_PAYLOAD, message)
            }
            ErrorKind::UniqueViolation | ErrorKind::Other => {
                deterministic(reason::SQL_ERROR, message)
            }
        }
    }

    /// The WIT name of the database's error kind (`permission-denied` as `permission_denied`),
    /// or `params` / `rows`: for diagnostics that report exactly what the host answered.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::Sql(e) => match e.kind {
                ErrorKind::PermissionDenied => "permission_denied",
                ErrorKind::UniqueViolation => "unique_violation",
                ErrorKind::SerializationFailure => "serialization_failure",
                ErrorKind::Timeout => "timeout",
                ErrorKind::Connection => "connection",
                ErrorKind::Other => "other",
            },
            Error::Params(_) => "params",
            Error::Rows(_) => "rows",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sql(e) => write!(f, "{} ({})", e.message, e.code),
            Error::Params(m) => write!(f, "parameters are not JSON: {m}"),
            Error::Rows(m) => write!(f, "{m}"),
        }
    }
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Outcome {
        e.outcome()
    }
}
