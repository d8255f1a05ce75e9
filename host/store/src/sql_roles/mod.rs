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
//! - A projection role is confined: no temporary tables, no `CREATE` anywhere, no membership in
//!   any role, no attribute beyond `LOGIN` ([`verify_confined`] checks it after every
//!   provisioning and the host refuses to start otherwise). The one function it may execute,
//!   `projector_settle`, runs with a pinned search path (`pg_catalog`, the outbox's schema,
//!   `pg_temp` last), so no object the role could create would stand in for the host's.
//! - Nothing a plugin leaves on a session survives the batch: the pool resets each connection
//!   ([`SESSION_RESET`]) when it is released.
//! - Roles are created with a random password kept in `projector_sql_roles` (readable by the
//!   host's own role only); hosts read it to log in. Provisioning runs under an advisory lock so
//!   hosts starting together do not race.
//!
//! The catalog reads and fixed statements are `.sql` files in this directory. The DDL that names a
//! role, a schema or a table (`CREATE ROLE`, `GRANT`, `REVOKE`, `CREATE FUNCTION` in the outbox's
//! schema) cannot take those as parameters, so it is built in Rust here, every identifier quoted
//! with [`quote_ident`] / [`quote_table`].

use crate::outbox::settle::SETTLE_SQL;
use crate::{Error, Result};
use projector_core::spec::ProjectionSpec;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::str::FromStr;

const RESOLVE_TABLE: &str = include_str!("resolve_table.sql");
const OUTBOX_SCHEMA: &str = include_str!("outbox_schema.sql");
const REVOKE_PUBLIC_DEFAULTS: &str = include_str!("revoke_public_defaults.sql");
const ROLE_POWERS: &str = include_str!("role_powers.sql");
const SCHEMAS_ROLE_MAY_CREATE_IN: &str = include_str!("schemas_role_may_create_in.sql");
const TABLES_GRANTED: &str = include_str!("tables_granted.sql");
const TABLES_GRANTED_LIVE: &str = include_str!("tables_granted_live.sql");
const TABLES_GRANTED_PRIVILEGES: &str = include_str!("tables_granted_privileges.sql");
const ROLE_EXISTS: &str = include_str!("role_exists.sql");
const ROLE_EXISTS_WITH_MEMBER: &str = include_str!("role_exists_with_member.sql");
const LOCK: &str = include_str!("lock.sql");
const STORED_PASSWORD: &str = include_str!("stored_password.sql");
const STORE_CREDENTIALS: &str = include_str!("store_credentials.sql");
const STORED_CREDENTIALS: &str = include_str!("stored_credentials.sql");
const SETTLE_FUNCTION: &str = include_str!("settle_function.sql");
const MAY_SETTLE: &str = include_str!("may_settle.sql");
const CURRENT_ROLE_MAY_CREATE_ROLES: &str = include_str!("current_role_may_create_roles.sql");

/// The role a projection's statements run as in `database`. Roles are cluster-wide, so the name
/// carries a digest of the database's name: two databases on one cluster may both have a
/// projection called `search` without sharing a role.
pub fn role_name(database: &str, projection: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(database.as_bytes()));
    format!("projector_{projection}_{}", &digest[..8])
}

/// `name` as a quoted SQL identifier (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` as Postgres resolves the configured `table` (on the current search path),
/// or `None` when there is no such table.
async fn resolve_table(conn: &mut PgConnection, table: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(RESOLVE_TABLE)
        .bind(quote_table(table))
        .fetch_optional(conn)
        .await
}

/// `schema.table` or `table`, each part quoted.
pub fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// The schema `outbox_events` lives in (resolved on the current search path), quoted.
async fn outbox_schema(conn: &mut PgConnection) -> sqlx::Result<String> {
    let schema: String = sqlx::query_scalar(OUTBOX_SCHEMA).fetch_one(conn).await?;
    Ok(quote_ident(&schema))
}

/// Creates or refreshes the settle function the restricted roles call, from the same
/// `settle.sql` the host runs directly (one definition of the transition).
///
/// It runs with its owner's rights (`SECURITY DEFINER`), so every name in it must resolve to the
/// host's objects whoever calls it: the search path is pinned to `pg_catalog`, the outbox's own
/// schema and `pg_temp` *last*, so neither a temporary table nor an object in a schema the caller
/// controls can stand in for `outbox_events` or a built-in function.
async fn install_settle_function(conn: &mut PgConnection) -> sqlx::Result<()> {
    let body = SETTLE_SQL;
    let schema = outbox_schema(conn).await?;
    let create = format!(
        "CREATE OR REPLACE FUNCTION {schema}.projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text)
         RETURNS TABLE (seq bigint, status text, attempts int, verdict text, retry_delay float8)
         LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, {schema}, pg_temp
         AS $projector_settle$ {body} $projector_settle$"
    );
    sqlx::raw_sql(&create).execute(&mut *conn).await?;
    sqlx::raw_sql(&format!("REVOKE ALL ON FUNCTION {schema}.projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text) FROM PUBLIC"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes from `PUBLIC` (every role, so also the projection roles) what a projection role must
/// not have: temporary tables in this database (a temporary object is how a caller shadows names
/// in functions that run with other rights) and `CREATE` in the `public` schema (PostgreSQL 15
/// revokes it by default; older clusters grant it). The host's role keeps `TEMPORARY` explicitly.
/// Application roles that need temporary tables must be granted `TEMPORARY` by name.
async fn revoke_public_defaults(conn: &mut PgConnection) -> Result<()> {
    sqlx::raw_sql(REVOKE_PUBLIC_DEFAULTS)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            Error::config(
                "DATABASE_URL",
                format!(
                    "cannot take TEMPORARY/CREATE away from PUBLIC ({e}): run `projector migrate \
                     --config FILE` once as the database's owner (see docs/security.md)"
                ),
            )
        })?;
    Ok(())
}

/// Checks what Postgres says `role` may do, after provisioning: no temporary tables, no `CREATE`
/// on the database or any schema, membership in no role, no attribute beyond `LOGIN`. Any of
/// these would be a path out of the grants; the host refuses to start rather than run a plugin
/// with it.
async fn verify_confined(conn: &mut PgConnection, projection: &str, role: &str) -> Result<()> {
    let (temp, create_db, super_, createrole, createdb, bypass, inherit_from): (
        bool,
        bool,
        bool,
        bool,
        bool,
        bool,
        Vec<String>,
    ) = sqlx::query_as(ROLE_POWERS)
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
    let schemas: Vec<String> = sqlx::query_scalar(SCHEMAS_ROLE_MAY_CREATE_IN)
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
    let mut problems = Vec::new();
    if temp {
        problems.push("may create temporary tables".to_owned());
    }
    if create_db {
        problems.push("may create schemas".to_owned());
    }
    if !schemas.is_empty() {
        problems.push(format!(
            "may create objects in schema(s) {}",
            schemas.join(", ")
        ));
    }
    if super_ || createrole || createdb || bypass {
        problems.push("holds SUPERUSER, CREATEROLE, CREATEDB or BYPASSRLS".to_owned());
    }
    if !inherit_from.is_empty() {
        problems.push(format!("is a member of {}", inherit_from.join(", ")));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::config(
        format!("projection `{projection}` grants.sql_tables"),
        format!(
            "the database role `{role}` {}; the host will not run a plugin with it (see docs/security.md)",
            problems.join("; ")
        ),
    ))
}

/// The role a projection's rebuild source query runs as in `database` (`NOLOGIN`; the host
/// assumes it with `SET LOCAL ROLE` in the source's read-only transaction). Opaque and short:
/// a digest of the database and projection names.
pub fn source_role_name(database: &str, projection: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(
        format!("{database}/{projection}").as_bytes(),
    ));
    format!("projector_src_{}", &digest[..16])
}

/// The tables `role` may `SELECT` (schema-qualified, sorted), and the ones `spec`'s
/// `source_tables` name, resolved.
async fn source_grants(
    conn: &mut PgConnection,
    spec: &ProjectionSpec,
    role: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let granted: Vec<String> = sqlx::query_scalar(TABLES_GRANTED)
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
    let mut wanted = Vec::new();
    for table in &spec.grants.source_tables {
        match resolve_table(conn, table).await? {
            Some(q) => wanted.push(q),
            None => {
                return Err(Error::config(
                    format!("projection `{}` grants.source_tables", spec.name),
                    format!("table `{table}` does not exist"),
                ))
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    Ok((granted, wanted))
}

/// The role `spec`'s rebuild source runs as, ready: it exists, may `SELECT` exactly
/// `[projection.grants] source_tables` and nothing else, and the current user is a member.
/// Prepared here when it is not (the current user needs `CREATEROLE`, as for [`prepare`]).
pub async fn source_role(pool: &PgPool, spec: &ProjectionSpec) -> Result<String> {
    let mut tx = pool.begin().await?;
    let database = crate::db::current_database(&mut tx).await?;
    let role = source_role_name(&database, &spec.name);
    let (granted, wanted) = source_grants(&mut tx, spec, &role).await?;
    let (exists, member): (bool, bool) = sqlx::query_as(ROLE_EXISTS_WITH_MEMBER)
        .bind(&role)
        .fetch_one(&mut *tx)
        .await?;
    if exists && member && granted == wanted {
        return Ok(role);
    }
    sqlx::query(LOCK).execute(&mut *tx).await?;
    prepare_source_role(&mut tx, spec, &role, "CURRENT_USER")
        .await
        .map_err(|e| {
            Error::config(
                format!("projection `{}` grants.source_tables", spec.name),
                format!(
                    "the rebuild source role `{role}` is not prepared and cannot be ({e}): run \
                     `projector migrate --config FILE` as the database owner"
                ),
            )
        })?;
    tx.commit().await?;
    Ok(role)
}

/// Creates `role` (`NOLOGIN`) if missing, grants it `SELECT` on exactly `spec`'s
/// `source_tables`, and makes `member` a member.
async fn prepare_source_role(
    conn: &mut PgConnection,
    spec: &ProjectionSpec,
    role: &str,
    member: &str,
) -> Result<()> {
    let role_q = quote_ident(role);
    let exists: bool = sqlx::query_scalar(ROLE_EXISTS)
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        let stmt =
            format!("CREATE ROLE {role_q} NOLOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE");
        sqlx::raw_sql(&stmt).execute(&mut *conn).await?;
    }
    let (granted, wanted) = source_grants(conn, spec, role).await?;
    let mut stmts = Vec::new();
    for table in granted.iter().filter(|t| !wanted.contains(t)) {
        stmts.push(format!(
            "REVOKE ALL ON TABLE {} FROM {role_q}",
            quote_table(table)
        ));
    }
    for table in &wanted {
        let schema = table.split('.').next().unwrap_or("public");
        stmts.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {role_q}",
            quote_ident(schema)
        ));
        stmts.push(format!(
            "GRANT SELECT ON TABLE {} TO {role_q}",
            quote_table(table)
        ));
    }
    stmts.push(format!("GRANT {role_q} TO {member}"));
    for stmt in stmts {
        sqlx::raw_sql(&stmt).execute(&mut *conn).await?;
    }
    Ok(())
}

/// What every projection role's connection is reset with when it goes back to its pool, so
/// nothing a plugin left on the session (settings, session advisory locks, `LISTEN`s, cursors,
/// temporary objects) reaches the next batch. Not `DISCARD ALL`: that would also drop the
/// prepared statements sqlx keeps for the host's own statements.
pub const SESSION_RESET: &str = include_str!("session_reset.sql");

/// The projector tables a running host reads and writes (and nothing else it needs).
const HOST_TABLES: &[&str] = &[
    "outbox_events",
    "plugin_versions",
    "plugin_canaries",
    "replay_audit",
    "projection_pauses",
    "outbox_claim_turns",
    "outbox_sweeps",
    "outbox_gauges",
    "projector_rebuilds",
];

/// The administrator's step (`projector migrate --config FILE [--host-role ROLE]`): creates or
/// refreshes every `sql` projection's role, grants it exactly its tables and the settle function,
/// installs that function, prepares every projection's rebuild source role ([`source_role`]),
/// takes `TEMPORARY` and `CREATE` away from `PUBLIC`, and makes
/// `host_role` (default: the current user) a member of each projection role. With a
/// `host_role`, also grants that role what a running host needs: DML on [`HOST_TABLES`],
/// reading, moving and removing `outbox_heads`, and reading the credentials, so the host itself needs no `CREATEROLE` and owns nothing. Returns
/// (projection, role, password) per projection.
pub async fn prepare(
    pool: &PgPool,
    all_projections: &[ProjectionSpec],
    host_role: Option<&str>,
) -> Result<Vec<(String, String, String)>> {
    let sql_projections: Vec<&ProjectionSpec> =
        all_projections.iter().filter(|p| p.grants.sql()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    install_settle_function(&mut tx).await?;
    revoke_public_defaults(&mut tx).await?;
    let database = crate::db::current_database(&mut tx).await?;
    let member = host_role.map_or("CURRENT_USER".to_owned(), quote_ident);
    if let Some(host) = host_role {
        let exists: bool = sqlx::query_scalar(ROLE_EXISTS)
            .bind(host)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Err(Error::config(
                "--host-role",
                format!("role `{host}` does not exist (create it first: CREATE ROLE {host} LOGIN PASSWORD '...')"),
            ));
        }
        let schema = outbox_schema(&mut tx).await?;
        let mut stmts = vec![
            format!("GRANT USAGE ON SCHEMA {schema} TO {member}"),
            format!("GRANT SELECT ON {schema}.projector_sql_roles, {schema}._sqlx_migrations TO {member}"),
            // The ordered claim reads the heads, the settle and the sweep move and remove them;
            // rows are added only by the outbox's triggers, which run as their owner.
            format!("GRANT SELECT, UPDATE, DELETE ON {schema}.outbox_heads TO {member}"),
        ];
        for table in HOST_TABLES {
            stmts.push(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.{table} TO {member}"
            ));
        }
        for stmt in stmts {
            sqlx::raw_sql(&stmt).execute(&mut *tx).await?;
        }
    }
    for spec in all_projections {
        let role = source_role_name(&database, &spec.name);
        prepare_source_role(&mut tx, spec, &role, &member).await?;
    }
    let mut credentials = Vec::new();
    for spec in sql_projections {
        let role = role_name(&database, &spec.name);
        if role.len() > 63 {
            return Err(Error::config(
                format!("projection `{}`", spec.name),
                "name too long for a database role (sql projections: at most 44 characters)",
            ));
        }
        let stored: Option<(String,)> = sqlx::query_as(STORED_PASSWORD)
            .bind(&spec.name)
            .fetch_optional(&mut *tx)
            .await?;
        let exists: bool = sqlx::query_scalar(ROLE_EXISTS)
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
                             (run `projector migrate --config FILE` as a role with CREATEROLE)",
                            spec.name
                        ),
                    )
                })?;
                sqlx::query(STORE_CREDENTIALS)
                    .bind(&spec.name)
                    .bind(&role)
                    .bind(&password)
                    .execute(&mut *tx)
                    .await?;
                password
            }
        };
        grant_tables(&mut tx, spec, &role).await?;
        // The host is a member of the role (not the other way round): that lets it end a
        // stalled backend of the role, and gives the role nothing.
        let stmt = format!("GRANT {} TO {member}", quote_ident(&role));
        sqlx::raw_sql(&stmt).execute(&mut *tx).await.map_err(|e| {
            Error::config(
                "DATABASE_URL",
                format!("cannot make the host's role a member of `{role}`: {e}"),
            )
        })?;
        verify_confined(&mut tx, &spec.name, &role).await?;
        credentials.push((spec.name.clone(), role, password));
    }
    tx.commit().await?;
    Ok(credentials)
}

/// Whether [`prepare`] already left everything as `sql_projections` need it, checked without
/// changing anything: the settle function as this host would install it, and for each
/// projection its stored password, its role, exactly its granted tables, `EXECUTE` on the
/// function and the host's membership. `Ok(Err(why))` names the first difference.
async fn prepared(
    conn: &mut PgConnection,
    sql_projections: &[&ProjectionSpec],
) -> Result<std::result::Result<Vec<(String, String, String)>, String>> {
    let function: Option<(String, Vec<String>)> = sqlx::query_as(SETTLE_FUNCTION)
        .fetch_optional(&mut *conn)
        .await?;
    match &function {
        Some((src, config))
            if src.trim() == SETTLE_SQL.trim()
                && config.iter().any(|c| {
                    c.starts_with("search_path=pg_catalog,") && c.ends_with("pg_temp")
                }) => {}
        Some(_) => return Ok(Err("projector_settle is out of date".into())),
        None => return Ok(Err("projector_settle is not installed".into())),
    }
    let database = crate::db::current_database(&mut *conn).await?;
    let mut credentials = Vec::new();
    for spec in sql_projections {
        let role = role_name(&database, &spec.name);
        let stored: Option<(String, String)> = sqlx::query_as(STORED_CREDENTIALS)
            .bind(&spec.name)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((stored_role, password)) = stored.filter(|(r, _)| *r == role) else {
            return Ok(Err(format!("no role for projection `{}`", spec.name)));
        };
        let mut wanted = Vec::new();
        for table in &spec.grants.sql_tables {
            match resolve_table(conn, table).await? {
                Some(q) => wanted.push(q),
                None => return Ok(Err(format!("table `{table}` does not exist"))),
            }
        }
        wanted.sort();
        wanted.dedup();
        let granted: Vec<(String, i64)> = sqlx::query_as(TABLES_GRANTED_PRIVILEGES)
            .bind(&role)
            .fetch_all(&mut *conn)
            .await?;
        let granted_tables: Vec<String> = granted.iter().map(|(t, _)| t.clone()).collect();
        if granted_tables != wanted || granted.iter().any(|(_, n)| *n != 4) {
            return Ok(Err(format!(
                "role `{role}` holds {granted_tables:?}, the configuration grants {wanted:?}"
            )));
        }
        let (execute, member): (bool, bool) = sqlx::query_as(MAY_SETTLE)
            .bind(&role)
            .fetch_one(&mut *conn)
            .await?;
        if !execute || !member {
            return Ok(Err(format!(
                "role `{role}` may not settle, or the host is not a member of it"
            )));
        }
        credentials.push((spec.name.clone(), stored_role, password));
    }
    Ok(Ok(credentials))
}

/// A pool of at most `size` connections made with `options` (a projection role's login) that
/// resets every connection ([`SESSION_RESET`]) when it is released, before it serves anything
/// else; a connection whose reset fails is closed, not reused.
pub fn restricted_pool(options: PgConnectOptions, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .after_release(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, SESSION_RESET).await?;
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// Makes sure every `sql`-granted projection has its role with exactly its grants, and returns a
/// pool per such projection, logged in as its role.
///
/// When an administrator already prepared the roles as the configuration says (`projector
/// migrate --config FILE`, see [`prepare`]), the host only checks that and logs in: it needs no
/// `CREATEROLE` and owns nothing. Otherwise a host whose role may create roles prepares them
/// itself; one that may not stops with what to run instead.
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
    let credentials = {
        let mut conn = pool.acquire().await?;
        match prepared(&mut conn, &sql_projections).await? {
            Ok(credentials) => {
                for (projection, role, _) in &credentials {
                    verify_confined(&mut conn, projection, role).await?;
                }
                credentials
            }
            Err(why) => {
                let (user, may_create_roles): (String, bool) =
                    sqlx::query_as(CURRENT_ROLE_MAY_CREATE_ROLES)
                        .fetch_one(&mut *conn)
                        .await?;
                if !may_create_roles {
                    return Err(Error::config(
                        "DATABASE_URL",
                        format!(
                            "the database roles of the sql projections are not prepared as the configuration says ({why}), \
                             and the host's role `{user}` may not create roles: run `projector migrate --config FILE \
                             --host-role {user}` once as the database owner (see docs/security.md)"
                        ),
                    ));
                }
                drop(conn);
                let only_sql: Vec<ProjectionSpec> =
                    sql_projections.iter().map(|p| (*p).clone()).collect();
                prepare(pool, &only_sql, None).await?
            }
        }
    };
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
        pools.push((projection, restricted_pool(options, pool_size(spec))));
    }
    Ok(pools)
}

/// Grants the role its tables (and only them), schema usage, and the settle function. The
/// shadow tables of a zero-downtime rebuild in progress (`projector_rebuild_*` schemas) are left
/// alone: the rebuild grants and drops them.
async fn grant_tables(conn: &mut PgConnection, spec: &ProjectionSpec, role: &str) -> Result<()> {
    let role_q = quote_ident(role);
    let granted: Vec<(String,)> = sqlx::query_as(TABLES_GRANTED_LIVE)
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
    let wanted: Vec<String> = {
        let mut resolved = Vec::new();
        for table in &spec.grants.sql_tables {
            let Some(qualified) = resolve_table(conn, table).await? else {
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
