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
