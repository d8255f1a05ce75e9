//! The `sql` capability: parameterised statements on the batch's transaction.
//!
//! Invariants:
//! - Statements run only while the host has lent the store a connection (inside a batch's
//!   transaction, see [`super::Handler::handle_in_transaction`]); at any other time the call
//!   fails with kind `connection`.
//! - That connection is logged in as the projection's own role (see [`crate::sql_roles`]), so
//!   what a statement may touch is decided by Postgres privileges, not by reading SQL text: a
//!   statement cannot `SET ROLE` its way out, because the session user itself is the restricted
//!   role.
//! - Parameters and rows cross the boundary as JSON; errors come back classified by SQLSTATE.

use super::PluginState;
use serde_json::{Map, Number, Value};
use sqlx::postgres::{PgArguments, PgRow, PgTypeKind};
use sqlx::Postgres;
use sqlx::{Column, PgConnection, Row, TypeInfo, ValueRef};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sql-plugin",
        with: {
            "projector:plugin/types": crate::plugin::bindings::projector::plugin::types,
            "projector:plugin/log": crate::plugin::bindings::projector::plugin::log,
            "projector:plugin/config": crate::plugin::bindings::projector::plugin::config,
        },
    });
}

use generated::projector::plugin::sql::Host;
pub(crate) use generated::projector::plugin::sql::{ErrorKind, SqlError};

/// Adds the `sql` interface to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    generated::projector::plugin::sql::add_to_linker::<PluginState, HasSelf<PluginState>>(
        linker,
        |s| s,
    )
}

/// Where a batch puts its transaction's connection while the plugin runs, and takes it back
/// from afterwards. Shared between the [`super::Handler`] and the store, so a trapped (discarded)
/// instance never takes the connection with it.
pub(crate) type ConnSlot = Arc<Mutex<Option<sqlx::Transaction<'static, Postgres>>>>;

/// The connection a batch lends to the plugin, and how long one statement may run.
pub(crate) struct SqlSession {
    pub(crate) conn: ConnSlot,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) statement_timeout: Duration,
}

fn error(kind: ErrorKind, code: &str, message: impl Into<String>) -> SqlError {
    SqlError {
        kind,
        code: code.to_owned(),
        message: message.into(),
    }
}

fn classify(e: sqlx::Error) -> SqlError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let kind = match code.as_str() {
                "42501" => ErrorKind::PermissionDenied,
                "23505" => ErrorKind::UniqueViolation,
                "40001" | "40P01" => ErrorKind::SerializationFailure,
                "57014" => ErrorKind::Timeout,
                c if c.starts_with("08") => ErrorKind::Connection,
                _ => ErrorKind::Other,
            };
            error(kind, &code, db.message())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => error(ErrorKind::Connection, "", e.to_string()),
        _ => error(ErrorKind::Other, "", e.to_string()),
    }
}

/// Binds the JSON params. Callers build the query with `persistent(false)`: sqlx caches
/// prepared statements by SQL text, and a plugin may bind different JSON types to the same text
/// (`[1, 42]`, then `[2, "abc"]`); a cached statement would silently keep the first call's
/// parameter types.
fn bind_params<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, PgArguments>,
    params: &str,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, PgArguments>, SqlError> {
    let params: Value = if params.trim().is_empty() {
        Value::Array(Vec::new())
    } else {
        serde_json::from_str(params)
            .map_err(|e| error(ErrorKind::Other, "", format!("params are not JSON: {e}")))?
    };
    let Value::Array(values) = params else {
        return Err(error(ErrorKind::Other, "", "params must be a JSON array"));
    };
    for v in values {
        query = match v {
            Value::Null => query.bind(None::<String>),
            Value::Bool(b) => query.bind(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.bind(i),
                None => query.bind(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => query.bind(s),
            other @ (Value::Array(_) | Value::Object(_)) => query.bind(sqlx::types::Json(other)),
        };
    }
    Ok(query)
}

/// One column value as JSON; unsupported types ask the plugin to cast.
fn column_json(row: &PgRow, i: usize) -> Result<Value, SqlError> {
    let raw = row.try_get_raw(i).map_err(classify)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_info = raw.type_info().into_owned();
    let name = type_info.name().to_ascii_uppercase();
    let get_err = |e: sqlx::Error| classify(e);
    let value = match name.as_str() {
        "BOOL" => Value::Bool(row.try_get(i).map_err(get_err)?),
        "INT2" => Value::from(row.try_get::<i16, _>(i).map_err(get_err)?),
        "INT4" => Value::from(row.try_get::<i32, _>(i).map_err(get_err)?),
        "INT8" => Value::from(row.try_get::<i64, _>(i).map_err(get_err)?),
        "FLOAT4" => Number::from_f64(row.try_get::<f32, _>(i).map_err(get_err)?.into()).map_or(Value::Null, Value::Number),
        "FLOAT8" => Number::from_f64(row.try_get::<f64, _>(i).map_err(get_err)?).map_or(Value::Null, Value::Number),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => Value::String(row.try_get(i).map_err(get_err)?),
        "JSON" | "JSONB" => row.try_get::<Value, _>(i).map_err(get_err)?,
        "UUID" => Value::String(row.try_get::<uuid::Uuid, _>(i).map_err(get_err)?.to_string()),
        "TIMESTAMPTZ" => Value::String(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(get_err)?
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        "TIMESTAMP" => Value::String(row.try_get::<chrono::NaiveDateTime, _>(i).map_err(get_err)?.to_string()),
        "DATE" => Value::String(row.try_get::<chrono::NaiveDate, _>(i).map_err(get_err)?.to_string()),
        _ if matches!(type_info.kind(), PgTypeKind::Enum(_)) => Value::String(row.try_get(i).map_err(get_err)?),
        other => {
            return Err(error(
                ErrorKind::Other,
                "",
                format!(
                    "column `{}` has type {other}, which the sql capability does not convert: cast it (e.g. `::text`)",
                    row.columns()[i].name()
                ),
            ))
        }
    };
    Ok(value)
}

impl SqlSession {
    fn run<T>(
        &mut self,
        work: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(conn) = slot.as_mut() else {
            return Err(error(
                ErrorKind::Connection,
                "",
                "no transaction: the sql capability is only usable inside handle()",
            ));
        };
        let limit = self.statement_timeout;
        self.runtime.block_on(async move {
            match tokio::time::timeout(limit + Duration::from_secs(1), work(&mut **conn)).await {
                Ok(r) => r,
                Err(_) => Err(error(
                    ErrorKind::Timeout,
                    "57014",
                    format!("statement ran past {limit:?}"),
                )),
            }
        })
    }
}

impl PluginState {
    fn sql_session(&mut self) -> Result<&mut SqlSession, SqlError> {
        self.sql.as_mut().ok_or_else(|| {
            error(
                ErrorKind::PermissionDenied,
                "",
                "the sql capability is not granted",
            )
        })
    }
}

impl Host for PluginState {
    fn query(&mut self, statement: String, params: String) -> Result<String, SqlError> {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.sql_query(&statement, &params);
        }
        self.sql_session()?.run(move |conn| {
            Box::pin(async move {
                let query = bind_params(sqlx::query(&statement).persistent(false), &params)?;
                let rows = query.fetch_all(conn).await.map_err(classify)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut obj = Map::new();
                    for (i, col) in row.columns().iter().enumerate() {
                        obj.insert(col.name().to_owned(), column_json(row, i)?);
                    }
                    out.push(Value::Object(obj));
                }
                Ok(Value::Array(out).to_string())
            })
        })
    }

    fn execute(&mut self, statement: String, params: String) -> Result<u64, SqlError> {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.sql_execute(&statement, &params);
        }
        self.sql_session()?.run(move |conn| {
            Box::pin(async move {
                let query = bind_params(sqlx::query(&statement).persistent(false), &params)?;
                Ok(query.execute(conn).await.map_err(classify)?.rows_affected())
            })
        })
    }
}
