//! The shadow tables of a zero-downtime rebuild of a sql projection: building the copies,
//! dropping them, and moving them in. When to move them in (catch-up, the pause, the checks
//! under the lock) is `projector_service::rebuild`'s switch.
//!
//! Invariants:
//! - The new model is built in a schema of its own (`projector_rebuild_<digest>`) holding a copy
//!   of each granted table (`LIKE ... INCLUDING ALL`, same owner and privileges, plus the
//!   projection role's grant). The plugin's batches run with that schema first on their
//!   `search_path` ([`put_first_on_search_path`]), so its unqualified table names reach the
//!   copies; readers keep reading the live tables. (A plugin that schema-qualifies its tables
//!   would write the live ones: the seed plugins do not.)
//! - Tables with dependent views, foreign keys pointing at them or triggers are refused before
//!   anything is built: moving a table would leave those attached to the old one.
//! - [`Shadow::swap_in`] runs in the caller's transaction, after [`Shadow::lock_live`]: the old
//!   tables are moved out and dropped, the copies moved in, `serial` sequences handed over. A
//!   reader blocked on the lock resumes on the new table.
//!
//! The catalog reads are `.sql` files here; the DDL (`CREATE SCHEMA`, `CREATE TABLE ... LIKE`,
//! `GRANT`, `ALTER TABLE ... SET SCHEMA`, `LOCK`, `TRUNCATE`, ...) names schemas, tables and roles,
//! which cannot be parameters, so it is built in Rust with every identifier quoted
//! ([`quote_ident`], [`quote_table`]).

use crate::sql_roles::{quote_ident, quote_table};
use crate::{Error, Result};
use projector_core::spec::ProjectionSpec;
use sqlx::{PgConnection, PgPool};

const FIND_TABLE: &str = include_str!("shadow_find_table.sql");
const DEPENDENTS: &str = include_str!("shadow_dependents.sql");
const OWNED_SEQUENCES: &str = include_str!("shadow_owned_sequences.sql");
const TABLE_OWNER: &str = include_str!("shadow_table_owner.sql");
const TABLE_ACL: &str = include_str!("shadow_table_acl.sql");
const LOCK_TIMEOUT: &str = include_str!("shadow_lock_timeout.sql");
const SEARCH_PATH: &str = include_str!("shadow_search_path.sql");

/// One live table being rebuilt.
#[derive(Debug, Clone)]
struct Target {
    /// Its schema.
    schema: String,
    /// Its name.
    name: String,
    /// Sequences owned by its columns (`serial`): (schema, sequence, column).
    owned_sequences: Vec<(String, String, String)>,
}

impl Target {
    fn live(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The shadow copies of one projection's tables.
#[derive(Debug)]
pub struct Shadow {
    /// The schema the copies live in.
    pub schema: String,
    projection: String,
    tables: Vec<Target>,
}

/// Empties `tables` (direct and outbox rebuilds with `--truncate`).
pub async fn truncate(conn: &mut PgConnection, tables: &[String]) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    exec(conn, &format!("TRUNCATE {}", list.join(", "))).await
}

/// Puts `schema` first on the search path of `conn`'s transaction (a plugin batch's).
pub async fn put_first_on_search_path(conn: &mut PgConnection, schema: &str) -> sqlx::Result<()> {
    sqlx::query(SEARCH_PATH)
        .bind(quote_ident(schema))
        .execute(conn)
        .await?;
    Ok(())
}

async fn exec(conn: &mut PgConnection, stmt: &str) -> Result<()> {
    sqlx::raw_sql(stmt).execute(conn).await?;
    Ok(())
}

impl Shadow {
    /// Creates the shadow schema with an empty copy of each of `spec`'s granted tables.
    pub async fn prepare(pool: &PgPool, spec: &ProjectionSpec) -> Result<Shadow> {
        use sha2::{Digest, Sha256};
        let schema = format!(
            "projector_rebuild_{}",
            &hex::encode(Sha256::digest(spec.name.as_bytes()))[..8]
        );
        let mut tx = pool.begin().await?;
        let database = crate::db::current_database(&mut tx).await?;
        let role = quote_ident(&crate::sql_roles::role_name(&database, &spec.name));
        let refuse = |table: &str, what: String| {
            Error::config(
                "--zero-downtime",
                format!("table `{table}` of projection `{}` {what}", spec.name),
            )
        };
        let mut tables = Vec::new();
        for table in &spec.grants.sql_tables {
            let found: Option<(i64, String, String)> = sqlx::query_as(FIND_TABLE)
                .bind(quote_table(table))
                .fetch_optional(&mut *tx)
                .await?;
            let Some((oid, table_schema, name)) = found else {
                return Err(refuse(table, "does not exist".into()));
            };
            let dependents: Vec<String> = sqlx::query_scalar(DEPENDENTS)
                .bind(oid)
                .fetch_all(&mut *tx)
                .await?;
            if let Some(first) = dependents.first() {
                return Err(refuse(
                    table,
                    format!("{first}: a zero-downtime rebuild cannot move it"),
                ));
            }
            let owned_sequences: Vec<(String, String, String)> = sqlx::query_as(OWNED_SEQUENCES)
                .bind(oid)
                .fetch_all(&mut *tx)
                .await?;
            tables.push((
                oid,
                Target {
                    schema: table_schema,
                    name,
                    owned_sequences,
                },
            ));
        }
        let schema_q = quote_ident(&schema);
        exec(
            &mut tx,
            &format!("DROP SCHEMA IF EXISTS {schema_q} CASCADE"),
        )
        .await?;
        exec(&mut tx, &format!("CREATE SCHEMA {schema_q}")).await?;
        exec(
            &mut tx,
            &format!("GRANT USAGE ON SCHEMA {schema_q} TO {role}"),
        )
        .await?;
        for (oid, t) in &tables {
            let copy = format!("{schema_q}.{}", quote_ident(&t.name));
            exec(
                &mut tx,
                &format!("CREATE TABLE {copy} (LIKE {} INCLUDING ALL)", t.live()),
            )
            .await?;
            let owner: String = sqlx::query_scalar(TABLE_OWNER)
                .bind(oid)
                .fetch_one(&mut *tx)
                .await?;
            exec(&mut tx, &format!("ALTER TABLE {copy} OWNER TO {owner}")).await?;
            let acl: Vec<(String, String, bool)> = sqlx::query_as(TABLE_ACL)
                .bind(oid)
                .fetch_all(&mut *tx)
                .await?;
            for (grantee, privilege, grantable) in acl {
                let option = if grantable { " WITH GRANT OPTION" } else { "" };
                exec(
                    &mut tx,
                    &format!("GRANT {privilege} ON {copy} TO {grantee}{option}"),
                )
                .await?;
            }
            exec(
                &mut tx,
                &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {copy} TO {role}"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Shadow {
            schema,
            projection: spec.name.clone(),
            tables: tables.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// The projection whose tables these are.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// Drops the copies (a failed rebuild): the live model is untouched.
    pub async fn discard(&self, pool: &PgPool) -> Result<()> {
        let mut conn = pool.acquire().await?;
        exec(
            &mut conn,
            &format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&self.schema)
            ),
        )
        .await
    }

    /// Locks the live tables in `tx` against readers and writers (waiting at most 10s), so
    /// that nothing changes them between the switch's last check and [`Shadow::swap_in`].
    pub async fn lock_live(&self, tx: &mut PgConnection) -> Result<()> {
        sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
        let live: Vec<String> = self.tables.iter().map(Target::live).collect();
        exec(
            tx,
            &format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", ")),
        )
        .await
    }

    /// In `tx`, after [`Shadow::lock_live`]: moves the old tables out and drops them, moves the
    /// copies in under the live names, and hands `serial` sequences to the new tables.
    pub async fn swap_in(&self, tx: &mut PgConnection) -> Result<()> {
        let retired = quote_ident(&format!("{}_old", self.schema));
        let schema_q = quote_ident(&self.schema);
        exec(tx, &format!("CREATE SCHEMA {retired}")).await?;
        for t in &self.tables {
            exec(
                tx,
                &format!("ALTER TABLE {} SET SCHEMA {retired}", t.live()),
            )
            .await?;
            exec(
                tx,
                &format!(
                    "ALTER TABLE {schema_q}.{} SET SCHEMA {}",
                    quote_ident(&t.name),
                    quote_ident(&t.schema)
                ),
            )
            .await?;
            // `serial` sequences moved out with the old table: hand them to the new one.
            for (seq_schema, seq, column) in &t.owned_sequences {
                let moved = format!("{retired}.{}", quote_ident(seq));
                exec(
                    tx,
                    &format!(
                        "ALTER SEQUENCE {moved} OWNED BY {}.{}",
                        t.live(),
                        quote_ident(column)
                    ),
                )
                .await?;
                exec(
                    tx,
                    &format!(
                        "ALTER SEQUENCE {moved} SET SCHEMA {}",
                        quote_ident(seq_schema)
                    ),
                )
                .await?;
            }
        }
        exec(tx, &format!("DROP SCHEMA {retired} CASCADE")).await?;
        exec(tx, &format!("DROP SCHEMA {schema_q} CASCADE")).await
    }
}
