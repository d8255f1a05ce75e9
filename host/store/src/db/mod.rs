//! Connecting to Postgres, applying the migrations in `../migrations`, and the session reads
//! every module shares (the readiness ping, the current database).
//!
//! Connection problems at start-up are configuration errors (exit 2) that name `DATABASE_URL`
//! but never print its password.
//!
//! Only `projector migrate`, `projector run` (unless `--no-migrate`) and the commands that write
//! apply migrations ([`migrate`]). A read-only command checks the schema instead
//! ([`require_current`]): it never creates a table, and a database that is not migrated is a
//! configuration error naming `projector migrate`.

use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;

const PING: &str = include_str!("ping.sql");
const CURRENT_USER: &str = include_str!("current_user.sql");
const CURRENT_DATABASE: &str = include_str!("current_database.sql");
const MIGRATIONS_TABLE_EXISTS: &str = include_str!("migrations_table_exists.sql");
const APPLIED_MIGRATIONS: &str = include_str!("applied_migrations.sql");
const READ_ONLY_SNAPSHOT: &str = include_str!("read_only_snapshot.sql");

/// How long start-up waits for the database to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded migrations (`migrations/*.sql` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool of at most `max_connections` and checks that the server answers.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Connect(format!("not a valid postgres URL: {e}")))?
        .application_name("projector");
    let where_ = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    // One direct connection first: a refused or unresolvable server fails at once instead of
    // after the pool's acquire timeout.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            Error::Connect(format!(
                "cannot connect to {where_}: no answer within {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Connect(format!("cannot connect to {where_}: {e}")))?;
    probe.close().await.ok();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| Error::Connect(format!("cannot connect to {where_}: {e}")))
}

/// Applies every pending migration. A database already at the latest migration is left alone
/// without asking for any privilege, so a host whose role owns nothing (see docs/security.md)
/// starts on a database its administrator migrated.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let result = match up_to_date(pool).await {
        Ok(true) => return Ok(()),
        Ok(false) => MIGRATOR.run(pool).await.map_err(Error::from),
        Err(e) => Err(e.into()),
    };
    let denied = |e: &sqlx::Error| matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"));
    match result {
        Err(Error::Database(e)) | Err(Error::Migrate(sqlx::migrate::MigrateError::Execute(e)))
            if denied(&e) =>
        {
            let user: String = sqlx::query_scalar(CURRENT_USER)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|_| "ROLE".into());
            Err(Error::config(
                "DATABASE_URL",
                format!(
                    "the database role `{user}` may not read or apply projector's migrations ({e}): \
                     run `projector migrate --config FILE --host-role {user}` once as the database \
                     owner (see docs/security.md)"
                ),
            ))
        }
        other => other,
    }
}

/// Whether every embedded migration is recorded as applied (and nothing else is).
async fn up_to_date(pool: &PgPool) -> sqlx::Result<bool> {
    Ok(matches!(schema(pool).await?, Schema::Current))
}

/// Where a database's projector schema stands against the migrations this binary embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// No migration was ever applied (no `_sqlx_migrations` table, or an empty one).
    Missing,
    /// Some embedded migrations are not applied yet.
    Behind {
        /// The versions not applied, in order.
        missing: Vec<i64>,
    },
    /// Every embedded migration is applied, and some this binary does not know are too (a newer
    /// projector migrated it).
    Ahead {
        /// The applied versions this binary does not embed.
        unknown: Vec<i64>,
    },
    /// Exactly the embedded migrations are applied.
    Current,
}

/// Reads where the schema stands; creates nothing.
pub async fn schema(pool: &PgPool) -> sqlx::Result<Schema> {
    let exists: bool = sqlx::query_scalar(MIGRATIONS_TABLE_EXISTS)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Schema::Missing);
    }
    let applied: Vec<i64> = sqlx::query_scalar(APPLIED_MIGRATIONS)
        .fetch_all(pool)
        .await?;
    if applied.is_empty() {
        return Ok(Schema::Missing);
    }
    let embedded: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let missing: Vec<i64> = embedded
        .iter()
        .filter(|v| !applied.contains(v))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Ok(Schema::Behind { missing });
    }
    let unknown: Vec<i64> = applied
        .iter()
        .filter(|v| !embedded.contains(v))
        .copied()
        .collect();
    Ok(if unknown.is_empty() {
        Schema::Current
    } else {
        Schema::Ahead { unknown }
    })
}

/// For read-only commands: succeeds when every migration this binary embeds is applied (a
/// newer schema is fine to read), else a configuration error naming `DATABASE_URL` and the fix,
/// `projector migrate`. Touches nothing.
pub async fn require_current(pool: &PgPool) -> Result<()> {
    let database = match pool.acquire().await {
        Ok(mut conn) => current_database(&mut conn).await.unwrap_or_default(),
        Err(e) => return Err(e.into()),
    };
    match schema(pool).await? {
        Schema::Current | Schema::Ahead { .. } => Ok(()),
        Schema::Missing => Err(Error::config(
            "DATABASE_URL",
            format!(
                "database `{database}` has no projector schema (no migration applied): run \
                 `projector migrate` first"
            ),
        )),
        Schema::Behind { missing } => {
            let missing: Vec<String> = missing.iter().map(|v| format!("{v:04}")).collect();
            Err(Error::config(
                "DATABASE_URL",
                format!(
                    "database `{database}` lacks migrations {} of this projector: run \
                     `projector migrate` first",
                    missing.join(", ")
                ),
            ))
        }
    }
}

/// Whether the server answers on `pool` (one round trip).
pub async fn ping(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(PING).execute(pool).await?;
    Ok(())
}

/// The name of the database `conn` is connected to.
pub async fn current_database(conn: &mut PgConnection) -> sqlx::Result<String> {
    sqlx::query_scalar(CURRENT_DATABASE).fetch_one(conn).await
}

/// Makes the transaction `tx` has just begun one consistent, read-only snapshot (`REPEATABLE
/// READ READ ONLY`): every read in it sees the same database.
pub async fn read_only_snapshot(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(READ_ONLY_SNAPSHOT).execute(tx).await?;
    Ok(())
}
