//! Connecting to Postgres and applying the migrations in `../migrations`.
//!
//! Connection problems at start-up are configuration errors (exit 2) that name `DATABASE_URL`
//! but never print its password.

use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

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
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
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
pub async fn migrate_command(database_url: Option<String>) -> Result<()> {
    let url = database_url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Error::config(
                "DATABASE_URL",
                "not set: pass --database-url or set DATABASE_URL",
            )
        })?;
    let pool = connect(&url, 2).await?;
    migrate(&pool).await?;
    tracing::info!(migrations = MIGRATOR.iter().count(), "database migrated");
    Ok(())
}
