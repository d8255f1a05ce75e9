//! Connecting to Postgres and applying the migrations in `../migrations`.
//!
//! Connection problems at start-up are configuration errors (exit 2) that name `DATABASE_URL`
//! but never print its password.

use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;

/// How long start-up waits for the database to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded migrations (`migrations/*.sql` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

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

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `projector migrate`.
pub async fn migrate_command(db: &crate::cli::Database) -> Result<()> {
    let pool = connect(db.url()?, 2).await?;
    migrate(&pool).await?;
    tracing::info!(migrations = MIGRATOR.iter().count(), "database migrated");
    Ok(())
}
