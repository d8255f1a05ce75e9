//! The `sql` capability: parameterised statements on the batch's transaction.
//!
//! Invariants:
//! - Statements run only while the host has lent the store a connection (inside a batch's
//!   transaction, see [`crate::Handler::handle_in_transaction`]); at any other time the call
//!   fails with kind `connection`.
//! - That connection is logged in as the projection's own role (see `projector_store::sql_roles`), so
//!   what a statement may touch is decided by Postgres privileges, not by reading SQL text: a
//!   statement cannot `SET ROLE` its way out, because the session user itself is the restricted
//!   role.
//! - What *kind* of statement runs is the host's call ([`crate::sql_policy`]): transaction
//!   control, session settings, `LISTEN`, `COPY`, `DO`, several statements in one string and
//!   functions whose effect outlives the batch are refused before Postgres sees them. A refused
//!   statement (or a result over its bounds) fails its event deterministically
//!   (`sql_forbidden_statement`, `sql_result_too_large`) whatever the plugin answers, and rolls
//!   the event's writes back.
//! - A `query` result is streamed and stops at `sql_max_rows` rows or `sql_max_result_bytes`
//!   bytes; the host holds at most that much of it (plus the one row being read).
//! - No statement outlives the batch's deadline: the server's `statement_timeout` (set by the
//!   host for the transaction) ends it, and if the server does not answer within a grace after
//!   the deadline the lease is marked stalled and the handler terminates the backend.
//! - Parameters and rows cross the boundary as JSON; errors come back classified by SQLSTATE.

use crate::capability::{BatchScope, Capability};
use futures_util::TryStreamExt;
use projector_core::spec::Grants;
use serde_json::{Map, Number, Value};
use sqlx::postgres::{PgArguments, PgRow, PgTypeKind};
use sqlx::Postgres;
use sqlx::{Column, PgConnection, Row, TypeInfo, ValueRef};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sql-plugin",
        with: {
            "projector:plugin/types": crate::bindings::projector::plugin::types,
            "projector:plugin/log": crate::bindings::projector::plugin::log,
            "projector:plugin/config": crate::bindings::projector::plugin::config,
        },
    });
}

use generated::projector::plugin::sql::Host;
pub use generated::projector::plugin::sql::{ErrorKind, SqlError};

/// The `sql` capability.
pub struct Sql;

/// Where a granted plugin's statements run: the batch's transaction on the projection's role in
/// `projector run` ([`SqlSession`]), an in-memory recorder in the test kit.
pub trait SqlBackend: Send + Sync {
    /// `sql.query`: the rows as a JSON array of objects. `deadline` bounds the wait.
    fn query(&self, scope: &BatchScope, statement: &str, params: &str) -> Result<String, SqlError>;
    /// `sql.execute`: rows affected.
    fn execute(&self, scope: &BatchScope, statement: &str, params: &str) -> Result<u64, SqlError>;
}

/// An instance's `sql` context: its backend when the projection is granted `sql`.
pub struct SqlCtx {
    backend: Option<Arc<dyn SqlBackend>>,
}

impl SqlCtx {
    /// The context of an instance whose statements go to `backend` (`None`: not granted).
    pub fn new(backend: Option<Arc<dyn SqlBackend>>) -> Self {
        SqlCtx { backend }
    }

    fn backend(&self) -> Result<&dyn SqlBackend, SqlError> {
        self.backend.as_deref().ok_or_else(|| {
            error(
                ErrorKind::PermissionDenied,
                "",
                "the sql capability is not granted",
            )
        })
    }
}

/// What `sql` calls see: the context and the batch.
pub struct SqlView<'a> {
    /// The instance's context.
    pub ctx: &'a mut SqlCtx,
    /// The batch being handled.
    pub scope: &'a BatchScope,
}

impl HasData for Sql {
    type Data<'a> = SqlView<'a>;
}

impl Capability for Sql {
    const NAME: &'static str = "sql";
    const INTERFACE: &'static str = "projector:plugin/sql@";
    type Data<'a> = SqlView<'a>;

    fn granted(grants: &Grants) -> bool {
        grants.sql()
    }

    fn add_to_linker<T: 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> SqlView<'_>,
    ) -> wasmtime::Result<()> {
        generated::projector::plugin::sql::add_to_linker::<T, Sql>(linker, get)
    }
}

/// What a batch lends its instance: the transaction's connection, and what the host refused or
/// noticed while the plugin used it. Shared between the [`crate::Handler`] and the store, so a
/// trapped (discarded) instance never takes the connection with it.
#[derive(Default)]
pub(crate) struct SqlLease {
    tx: Mutex<Option<sqlx::Transaction<'static, Postgres>>>,
    /// The first statement of the current call the host refused (forbidden, result too large).
    refusal: Mutex<Option<Refusal>>,
    /// Set when a statement outran the host-side deadline: the connection is still busy on the
    /// server, so nothing else may run on it and the handler ends the backend.
    stalled: AtomicBool,
}

/// The lease a [`crate::Handler`] owns (one per claim loop).
pub(crate) type ConnSlot = Arc<SqlLease>;

/// Why the host refused a plugin's statement. The event it ran for fails deterministically with
/// `reason`, whatever the plugin answers: a plugin cannot swallow the refusal and claim success.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqlLease {
    /// Lends `tx` to the instance for one call.
    pub(crate) fn lend(&self, tx: sqlx::Transaction<'static, Postgres>) {
        *lock(&self.tx) = Some(tx);
    }

    /// Takes the transaction back after the call.
    pub(crate) fn take_back(&self) -> sqlx::Transaction<'static, Postgres> {
        lock(&self.tx)
            .take()
            .expect("the plugin hands the transaction back")
    }

    /// What the host refused during the last call (and forgets it).
    pub(crate) fn take_refusal(&self) -> Option<Refusal> {
        lock(&self.refusal).take()
    }

    /// Whether a statement overran its deadline (the connection must not be used again).
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(AtomicOrdering::SeqCst)
    }

    /// Forgets a stall once the handler has dealt with it (a fresh transaction comes next).
    pub(crate) fn clear_stall(&self) {
        self.stalled.store(false, AtomicOrdering::SeqCst);
    }

    fn refuse(&self, reason: &'static str, message: String) {
        let mut slot = lock(&self.refusal);
        if slot.is_none() {
            *slot = Some(Refusal { reason, message });
        }
    }
}

/// Bounds on what one `query` may bring into the host (per projection: `[projection.grants]
/// sql_max_rows`, `sql_max_result_bytes`). Rows are streamed and counted as they arrive; the
/// call stops at the first row past either bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResultLimits {
    pub(crate) max_rows: usize,
    pub(crate) max_bytes: usize,
}

/// The connection a batch lends to the plugin, and how long one statement may run.
pub(crate) struct SqlSession {
    pub(crate) conn: ConnSlot,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) statement_timeout: Duration,
    pub(crate) limits: ResultLimits,
}

/// How a statement's run ended when it did not return rows or a count.
enum Failure {
    Sql(SqlError),
    Refused(&'static str, String),
}

impl From<SqlError> for Failure {
    fn from(e: SqlError) -> Self {
        Failure::Sql(e)
    }
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

/// Grace the host gives a statement past its deadline before it declares the connection stalled.
/// The server's own `statement_timeout` (set by the host for the batch, and not changeable by an
/// allowed statement) normally ends the statement first.
const STALL_GRACE: Duration = Duration::from_secs(1);

impl SqlSession {
    /// Refuses `statement` when [`crate::sql_policy`] does; the refusal is remembered for the
    /// event and logged.
    fn admit(&self, statement: &str, projection: &str) -> Result<(), SqlError> {
        crate::sql_policy::check(statement).map_err(|why| {
            tracing::warn!(projection, statement = %truncated(statement, 200), reason = %why, "refused a plugin's sql statement");
            self.conn
                .refuse("sql_forbidden_statement", format!("statement refused: {why}"));
            error(
                ErrorKind::PermissionDenied,
                "42501",
                format!("sql_forbidden_statement: {why}"),
            )
        })
    }

    fn run<T>(
        &self,
        deadline: Option<Instant>,
        work: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, Failure>>,
    ) -> Result<T, SqlError> {
        if self.conn.stalled() {
            return Err(error(
                ErrorKind::Connection,
                "",
                "the batch's connection is being reset after a statement overran its deadline",
            ));
        }
        let mut slot = lock(&self.conn.tx);
        let Some(conn) = slot.as_mut() else {
            return Err(error(
                ErrorKind::Connection,
                "",
                "no transaction: the sql capability is only usable inside handle()",
            ));
        };
        let limit = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(self.statement_timeout),
            None => self.statement_timeout,
        };
        let outcome = self.runtime.block_on(async move {
            tokio::time::timeout(limit + STALL_GRACE, work(&mut **conn)).await
        });
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Sql(e))) => Err(e),
            Ok(Err(Failure::Refused(reason, message))) => {
                let e = error(ErrorKind::Other, "54000", format!("{reason}: {message}"));
                self.conn.refuse(reason, message);
                Err(e)
            }
            Err(_) => {
                self.conn.stalled.store(true, AtomicOrdering::SeqCst);
                Err(error(
                    ErrorKind::Timeout,
                    "57014",
                    format!("statement ran past {limit:?}"),
                ))
            }
        }
    }
}

/// How long a statement the host itself runs on a lent connection (savepoints) may take before
/// the host gives up on the connection.
pub(crate) const HOST_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ends backend `pid` (a projection role's connection that stopped answering) from the host's
/// own pool. The host role is a member of every projection role it provisions, which is what
/// lets it signal their backends; a failure is logged, and the connection is dropped anyway.
pub(crate) fn end_backend(rt: &tokio::runtime::Handle, supervisor: &sqlx::PgPool, pid: i32) {
    if pid == 0 {
        return;
    }
    let ended = rt.block_on(tokio::time::timeout(
        HOST_STATEMENT_TIMEOUT,
        sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(supervisor),
    ));
    match ended {
        Ok(Ok(true)) => tracing::warn!(pid, "ended a projection's stalled database backend"),
        Ok(Ok(false)) => tracing::warn!(pid, "the stalled backend was already gone"),
        Ok(Err(e)) => tracing::error!(pid, error = %e, "could not end a stalled backend"),
        Err(_) => tracing::error!(pid, "ending a stalled backend timed out"),
    }
}

/// At most `max` bytes of `text` (cut at a char boundary), for logs.
fn truncated(text: &str, max: usize) -> &str {
    let cut = (0..=max.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

impl Host for SqlView<'_> {
    fn query(&mut self, statement: String, params: String) -> Result<String, SqlError> {
        self.ctx.backend()?.query(self.scope, &statement, &params)
    }

    fn execute(&mut self, statement: String, params: String) -> Result<u64, SqlError> {
        self.ctx.backend()?.execute(self.scope, &statement, &params)
    }
}

/// The host's `sql`: statements on the batch's transaction, under the statement policy and
/// the result limits.
impl SqlBackend for SqlSession {
    fn query(&self, scope: &BatchScope, statement: &str, params: &str) -> Result<String, SqlError> {
        self.admit(statement, &scope.projection)?;
        let limits = self.limits;
        let (statement, params) = (statement.to_owned(), params.to_owned());
        self.run(scope.deadline, move |conn| {
            Box::pin(async move { fetch_rows(conn, &statement, &params, limits).await })
        })
    }

    fn execute(&self, scope: &BatchScope, statement: &str, params: &str) -> Result<u64, SqlError> {
        self.admit(statement, &scope.projection)?;
        let (statement, params) = (statement.to_owned(), params.to_owned());
        self.run(scope.deadline, move |conn| {
            Box::pin(async move { Ok(execute_rows(conn, &statement, &params).await?) })
        })
    }
}

/// Runs a query with JSON `params` on `conn` and returns its rows as a JSON array of objects,
/// streamed and stopped at `limits`.
async fn fetch_rows(
    conn: &mut PgConnection,
    statement: &str,
    params: &str,
    limits: ResultLimits,
) -> Result<String, Failure> {
    let query = bind_params(sqlx::query(statement).persistent(false), params)?;
    // Streamed: a result is judged row by row as it arrives, never collected whole
    // before its size is known.
    let mut rows = query.fetch(conn);
    let mut out = Vec::new();
    let mut bytes = 2usize;
    while let Some(row) = rows.try_next().await.map_err(classify)? {
        if out.len() >= limits.max_rows {
            return Err(Failure::Refused(
                "sql_result_too_large",
                format!(
                    "the query returned more than {} rows (sql_max_rows)",
                    limits.max_rows
                ),
            ));
        }
        let mut obj = Map::new();
        for (i, col) in row.columns().iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(classify)?;
            bytes += col.name().len()
                + if raw.is_null() {
                    4
                } else {
                    raw.as_bytes().map_or(0, <[u8]>::len)
                }
                + 4;
            if bytes > limits.max_bytes {
                return Err(Failure::Refused(
                    "sql_result_too_large",
                    format!(
                        "the query's result is larger than {} bytes (sql_max_result_bytes)",
                        limits.max_bytes
                    ),
                ));
            }
            obj.insert(col.name().to_owned(), column_json(&row, i)?);
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out).to_string())
}

/// Runs a statement with JSON `params` on `conn` and returns the rows it affected.
async fn execute_rows(
    conn: &mut PgConnection,
    statement: &str,
    params: &str,
) -> Result<u64, SqlError> {
    let query = bind_params(sqlx::query(statement).persistent(false), params)?;
    Ok(query.execute(conn).await.map_err(classify)?.rows_affected())
}

/// `sql.query` on a connection the caller owns (the authoring test kit's `--database-url`
/// mode): the same parameter binding, row conversion, default result bounds and error
/// classification as inside a batch, without the batch's role, lease or deadline. What
/// [`crate::sql_policy`] refuses is the caller's to check first.
pub async fn query_on(
    conn: &mut PgConnection,
    statement: &str,
    params: &str,
) -> Result<String, SqlError> {
    let limits = ResultLimits {
        max_rows: projector_core::spec::Grants::default().sql_max_rows(),
        max_bytes: projector_core::spec::Grants::default().sql_max_result_bytes(),
    };
    fetch_rows(conn, statement, params, limits)
        .await
        .map_err(|f| match f {
            Failure::Sql(e) => e,
            Failure::Refused(reason, message) => {
                error(ErrorKind::Other, "54000", format!("{reason}: {message}"))
            }
        })
}

/// `sql.execute` on a connection the caller owns; see [`query_on`].
pub async fn execute_on(
    conn: &mut PgConnection,
    statement: &str,
    params: &str,
) -> Result<u64, SqlError> {
    execute_rows(conn, statement, params).await
}
