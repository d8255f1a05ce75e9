//! Where the `sql` capability is granted: one Postgres role per projection, holding privileges on
//! that projection's granted tables only, and a connection pool logged in as that role.
//!
//! Invariants:
//! - A projection's plugin statements run on a connection whose *session* user is the
//!   projection's role (`projector_<name>_<database digest>`), never on the host's own connection: `RESET ROLE`,
//!   `SET ROLE` or `set_config('role', ...)` inside a plugin statement cannot reach the host's
//!   privileges, because there is nothing to return to.
//! - The role holds `SELECT, INSERT, UPDATE, DELETE` on exactly the tables in
//!   `[projection.grants] sql_tables` (grants no longer listed are revoked at the next start), and
//!   `EXECUTE` on `projector_settle`, the one way it can record outcomes, which is fenced by the
//!   claim's unguessable `claim_batch_id` like every other write.
//! - Roles are created with a random password kept in `projector_sql_roles` (readable by the
//!   host's own role only); hosts read it to log in. Provisioning runs under an advisory lock so
//!   hosts starting together do not race.

use crate::outbox::settle::SETTLE_SQL;
use crate::settings::ProjectionSpec;
use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::str::FromStr;

/// The role a projection's statements run as in `database`. Roles are cluster-wide, so the name
/// carries a digest of the database's name: two databases on one cluster may both have a
/// projection called `search` without sharing a role.
pub fn role_name(database: &str, projection: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(database.as_bytes()));
    format!("projector_{projection}_{}", &digest[..8])
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, each part quoted.
pub(crate) fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// Creates or refreshes the settle function the restricted roles call, from the same
/// `settle.sql` the host runs directly (one definition of the transition).
async fn install_settle_function(conn: &mut PgConnection) -> sqlx::Result<()> {
    let body = SETTLE_SQL;
    let create = format!(
        "CREATE OR REPLACE FUNCTION projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text)
         RETURNS TABLE (seq bigint, status text, attempts int, verdict text, retry_delay float8)
         LANGUAGE sql SECURITY DEFINER SET search_path = public
         AS $projector_settle$ {body} $projector_settle$"
    );
    sqlx::raw_sql(&create).execute(&mut *conn).await?;
    sqlx::raw_sql("REVOKE ALL ON FUNCTION projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text) FROM PUBLIC")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Makes sure every `sql`-granted projection has its role with exactly its grants, and returns a
/// pool per such projection, logged in as its role.
pub async fn provision(
    pool: &PgPool,
    database_url: &str,
    projections: &[ProjectionSpec],
    pool_size: impl Fn(&ProjectionSpec) -> u32,
) -> Result<Vec<(String, PgPool)>> {
    let sql_projections: Vec<&ProjectionSpec> =
        projections.iter().filter(|p| p.grants.sql()).collect();
    if sql_projections.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projector_sql_roles'))")
        .execute(&mut *tx)
        .await?;
    install_settle_function(&mut tx).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *tx)
        .await?;
    let mut credentials = Vec::new();
    for spec in &sql_projections {
        let role = role_name(&database, &spec.name);
        if role.len() > 63 {
            return Err(Error::config(
                format!("projection `{}`", spec.name),
                "name too long for a database role (sql projections: at most 44 characters)",
            ));
        }
        let stored: Option<(String,)> =
            sqlx::query_as("SELECT password FROM projector_sql_roles WHERE projection = $1")
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&role)
                .fetch_one(&mut *tx)
                .await?;
        let password = match stored {
            Some((p,)) if exists => p,
            _ => {
                let password = uuid::Uuid::new_v4().simple().to_string();
                let verb = if exists { "ALTER" } else { "CREATE" };
                let stmt = format!(
                    "{verb} ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'",
                    quote_ident(&role)
                );
                sqlx::raw_sql(&stmt).execute(&mut *tx).await.map_err(|e| {
                    Error::config(
                        "DATABASE_URL",
                        format!(
                            "cannot create the database role `{role}` for sql projection `{}`: {e} \
                             (the host's database user needs CREATEROLE)",
                            spec.name
                        ),
                    )
                })?;
                sqlx::query(
                    "INSERT INTO projector_sql_roles (projection, role, password) VALUES ($1, $2, $3)
                     ON CONFLICT (projection) DO UPDATE SET role = EXCLUDED.role, password = EXCLUDED.password",
                )
                .bind(&spec.name)
                .bind(&role)
                .bind(&password)
                .execute(&mut *tx)
                .await?;
                password
            }
        };
        grant_tables(&mut tx, spec, &role).await?;
        credentials.push((spec.name.clone(), role, password));
    }
    tx.commit().await?;

    let base =
        PgConnectOptions::from_str(database_url).map_err(|e| Error::Connect(e.to_string()))?;
    let mut pools = Vec::new();
    for (projection, role, password) in credentials {
        let spec = projections
            .iter()
            .find(|p| p.name == projection)
            .expect("listed above");
        let options = base
            .clone()
            .username(&role)
            .password(&password)
            .application_name(&role);
        // Fail at start-up, with the role named, if pg_hba does not let the role in.
        let probe = PgConnection::connect_with(&options).await.map_err(|e| {
            Error::Connect(format!(
                "cannot log in as `{role}` (the role sql projection `{projection}` runs as): {e}"
            ))
        })?;
        probe.close().await.ok();
        let restricted = PgPoolOptions::new()
            .max_connections(pool_size(spec))
            .connect_lazy_with(options);
        pools.push((projection, restricted));
    }
    Ok(pools)
}

/// Grants the role its tables (and only them), schema usage, and the settle function. The
/// shadow tables of a zero-downtime rebuild in progress (`projector_rebuild_*` schemas) are left
/// alone: the rebuild grants and drops them.
async fn grant_tables(conn: &mut PgConnection, spec: &ProjectionSpec, role: &str) -> Result<()> {
    let role_q = quote_ident(role);
    let granted: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT table_schema || '.' || table_name FROM information_schema.role_table_grants
         WHERE grantee = $1 AND table_schema NOT LIKE 'projector\\_rebuild\\_%'",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    let wanted: Vec<String> = {
        let mut resolved = Vec::new();
        for table in &spec.grants.sql_tables {
            let qualified: Option<(String,)> = sqlx::query_as(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(quote_table(table))
            .fetch_optional(&mut *conn)
            .await?;
            let Some((qualified,)) = qualified else {
                return Err(Error::config(
                    format!("projection `{}` grants.sql_tables", spec.name),
                    format!(
                        "table `{table}` does not exist (create it with your migrations first)"
                    ),
                ));
            };
            resolved.push(qualified);
        }
        resolved
    };
    for (table,) in &granted {
        if !wanted.contains(table) {
            let stmt = format!("REVOKE ALL ON TABLE {} FROM {role_q}", quote_table(table));
            sqlx::raw_sql(&stmt).execute(&mut *conn).await?;
        }
    }
    for table in &wanted {
        let schema = table.split('.').next().unwrap_or("public");
        let stmts = [
            format!("GRANT USAGE ON SCHEMA {} TO {role_q}", quote_ident(schema)),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {role_q}",
                quote_table(table)
            ),
        ];
        for stmt in stmts {
            sqlx::raw_sql(&stmt).execute(&mut *conn).await?;
        }
    }
    let stmt = format!(
        "GRANT EXECUTE ON FUNCTION projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text) TO {role_q}"
    );
    sqlx::raw_sql(&stmt).execute(&mut *conn).await?;
    Ok(())
}
