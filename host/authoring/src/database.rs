//! The test kit against a real Postgres (`projector plugin test --database-url URL`): the
//! plugin's `sql` statements run on a real database, and the kit can read back what they did.
//!
//! Invariants:
//! - One transaction for the whole run, rolled back at the end: the database is left as the kit
//!   found it, so a run can be repeated and two runs never see each other's rows. Point it at a
//!   development database that holds the plugin's tables (its migrations applied).
//! - Each delivery runs under a savepoint, released when the outcome is `success` and rolled
//!   back otherwise, as the host does per event: a failed event leaves no write.
//! - Statements get the host's parameter binding, row conversion, error classification and
//!   statement policy (`projector_runtime::sql_policy`; a refused statement fails its event with
//!   `sql_forbidden_statement`), but run as the URL's user: the projection's grant is not
//!   enforced here (the host's per-projection role does that).
//! - [`Database::contents`] reads the tables the kit was told about (`--sql-table`) inside the
//!   same transaction, every row as JSON in a fixed order, so two readings compare equal exactly
//!   when the tables hold the same rows.
//!
//! The kit's own statements (savepoints, the table reads) are here rather than in
//! `projector-store`: the author tools sit beside the service and use no store.

use crate::Error;
use projector_runtime::sql::{execute_on, query_on, ErrorKind, SqlError};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long one statement of the plugin may run (as a batch's statements under the default
/// `OUTBOX_MAX_PROCESSING_SECONDS`: nine tenths of 60 s).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(54);

/// What the kit's tables hold: table → its rows as JSON text, sorted.
pub type Contents = BTreeMap<String, Vec<String>>;

/// A connection in an open transaction, and the tables to read back.
pub struct Database {
    rt: tokio::runtime::Runtime,
    conn: Mutex<PgConnection>,
    tables: Vec<String>,
    /// The first statement of the current delivery that the statement policy refused.
    refusal: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Database {
    /// Connects to `url`, opens the run's transaction and checks that every table in `tables`
    /// exists (a usage error naming it otherwise).
    pub fn open(url: &str, tables: Vec<String>) -> Result<Database, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("starting the database client: {e}"))?;
        let conn = rt.block_on(async {
            let mut conn = PgConnection::connect(url)
                .await
                .map_err(|e| Error::config("--database-url", format!("cannot connect: {e}")))?;
            sqlx::raw_sql(&format!(
                "BEGIN; SET LOCAL statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| Error::config("--database-url", format!("cannot begin: {e}")))?;
            Ok::<_, Error>(conn)
        })?;
        let db = Database {
            rt,
            conn: Mutex::new(conn),
            tables,
            refusal: Mutex::new(None),
        };
        for table in &db.tables {
            db.read_table(table).map_err(|e| {
                Error::config("--sql-table", format!("`{table}` cannot be read: {e}"))
            })?;
        }
        Ok(db)
    }

    /// Runs one of the kit's own statements.
    fn kit(&self, statement: &str) -> Result<(), Error> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(sqlx::raw_sql(statement).execute(&mut *conn))
            .map(drop)
            .map_err(|e| Error::Other(anyhow::anyhow!("`{statement}` failed: {e}")))
    }

    /// Starts a delivery: a savepoint, and no refusal yet.
    pub fn begin_delivery(&self) -> Result<(), Error> {
        lock(&self.refusal).take();
        self.kit("SAVEPOINT projector_event")
    }

    /// Ends a delivery: its writes stay when `keep`, else they are rolled back. `Ok(false)` when
    /// they had to be rolled back although `keep` was asked (a statement of the event failed and
    /// aborted the transaction), as the host's `sql_aborted`.
    pub fn end_delivery(&self, keep: bool) -> Result<bool, Error> {
        if keep && self.kit("RELEASE SAVEPOINT projector_event").is_ok() {
            return Ok(true);
        }
        self.kit("ROLLBACK TO SAVEPOINT projector_event")?;
        self.kit("RELEASE SAVEPOINT projector_event")?;
        Ok(!keep)
    }

    /// The statement the policy refused during this delivery, if any.
    pub fn refusal(&self) -> Option<String> {
        lock(&self.refusal).clone()
    }

    /// What the tables hold now.
    pub fn contents(&self) -> Result<Contents, Error> {
        self.tables
            .iter()
            .map(|t| Ok((t.clone(), self.read_table(t)?)))
            .collect()
    }

    fn read_table(&self, table: &str) -> Result<Vec<String>, Error> {
        let quoted = table
            .split('.')
            .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".");
        let statement = format!(
            "SELECT to_jsonb(t)::text AS row FROM {quoted} AS t ORDER BY to_jsonb(t)::text"
        );
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(sqlx::query_scalar::<_, String>(&statement).fetch_all(&mut *conn))
            .map_err(|e| Error::Other(anyhow::anyhow!("reading `{table}`: {e}")))
    }

    /// Rolls the run's transaction back (also what dropping the connection does).
    pub fn finish(self) {
        let _ = self.kit("ROLLBACK");
    }

    fn admit(&self, statement: &str) -> Result<(), SqlError> {
        projector_runtime::sql_policy::check(statement).map_err(|why| {
            lock(&self.refusal).get_or_insert_with(|| format!("statement refused: {why}"));
            SqlError {
                kind: ErrorKind::PermissionDenied,
                code: "42501".into(),
                message: format!("sql_forbidden_statement: {why}"),
            }
        })
    }

    /// `sql.query` on the run's transaction.
    pub fn query(&self, statement: &str, params: &str) -> Result<String, SqlError> {
        self.admit(statement)?;
        let mut conn = lock(&self.conn);
        self.rt.block_on(query_on(&mut conn, statement, params))
    }

    /// `sql.execute` on the run's transaction.
    pub fn execute(&self, statement: &str, params: &str) -> Result<u64, SqlError> {
        self.admit(statement)?;
        let mut conn = lock(&self.conn);
        self.rt.block_on(execute_on(&mut conn, statement, params))
    }
}

/// The rows `after` holds that `before` did not (`+`) and the reverse (`-`), per table; a row
/// held twice where it was held once counts as added.
pub fn changes(before: &Contents, after: &Contents) -> Vec<String> {
    let mut out = Vec::new();
    for (table, rows) in after {
        let mut count: BTreeMap<&str, i64> = BTreeMap::new();
        for row in rows {
            *count.entry(row).or_default() += 1;
        }
        for row in before.get(table).into_iter().flatten() {
            *count.entry(row).or_default() -= 1;
        }
        for (row, n) in count.iter().filter(|(_, n)| **n < 0) {
            out.extend((0..-n).map(|_| format!("{table}: - {row}")));
        }
        for (row, n) in count.iter().filter(|(_, n)| **n > 0) {
            out.extend((0..*n).map(|_| format!("{table}: + {row}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_rows_gone_added_and_doubled() {
        let contents = |rows: &[&str]| -> Contents {
            [("t".to_owned(), rows.iter().map(|r| r.to_string()).collect())].into()
        };
        assert!(changes(&contents(&["a", "b"]), &contents(&["a", "b"])).is_empty());
        assert_eq!(
            changes(&contents(&["a", "b"]), &contents(&["a", "a", "c"])),
            vec!["t: - b", "t: + a", "t: + c"]
        );
    }
}
