//! Zero-downtime rebuilds of sql projections: shadow tables, catch-up, and the switch.
//!
//! Invariants:
//! - The new model is built in a schema of its own (`projector_rebuild_<digest>`) holding a copy
//!   of each granted table (`LIKE ... INCLUDING ALL`, same owner and privileges, plus the
//!   projection role's grant). The plugin's batches run with that schema first on their
//!   `search_path`, so its unqualified table names reach the copies; readers keep reading the
//!   live tables. (A plugin that schema-qualifies its tables would write the live ones: the
//!   seed plugins do not.)
//! - Catch-up: events written after the rebuild's snapshot were not in the source rows; those
//!   the hosts applied to the old model meanwhile (`done`) are applied to the new one too, in
//!   seq order, each exactly once. Those still unfinished are left to the hosts, which apply them
//!   to whatever model is live when they run.
//! - The switch is one transaction: with the projection paused and nothing of it in flight, the
//!   live tables are locked, a last check finds nothing new to catch up, the old tables are
//!   moved out and dropped, the copies moved in, and the unfinished events the new model already
//!   contains (written in the snapshot) are marked done ([`projector_store::outbox::operator::supersede_in_snapshot`]).
//!   A reader blocked on the lock resumes on the new table; no reader sees a partial model.
//! - Tables with dependent views, foreign keys pointing at them or triggers are refused before
//!   anything is built: moving a table would leave those attached to the old one.

use super::{Applier, Report};
use crate::settings::ProjectionSpec;
use crate::{Error, Result};
use projector_store::sql_roles::{quote_ident, quote_table};
use sqlx::{PgConnection, PgPool};

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
    sqlx::raw_sql(&format!("TRUNCATE {}", list.join(", ")))
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
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&mut *tx)
            .await?;
        let role = quote_ident(&projector_store::sql_roles::role_name(
            &database, &spec.name,
        ));
        let refuse = |table: &str, what: String| {
            Error::config(
                "--zero-downtime",
                format!("table `{table}` of projection `{}` {what}", spec.name),
            )
        };
        let mut tables = Vec::new();
        for table in &spec.grants.sql_tables {
            let found: Option<(i64, String, String)> = sqlx::query_as(
                "SELECT c.oid::bigint, n.nspname::text, c.relname::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(quote_table(table))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((oid, table_schema, name)) = found else {
                return Err(refuse(table, "does not exist".into()));
            };
            let dependents: Vec<String> = sqlx::query_scalar(
                "SELECT 'has the dependent view ' || v.oid::regclass::text
                 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
                 WHERE d.refobjid = $1::oid AND v.oid <> $1::oid
                 UNION
                 SELECT 'is referenced by the foreign key ' || conname || ' of ' || conrelid::regclass::text
                 FROM pg_constraint WHERE confrelid = $1::oid AND contype = 'f'
                 UNION
                 SELECT 'has the trigger ' || tgname FROM pg_trigger WHERE tgrelid = $1::oid AND NOT tgisinternal",
            )
            .bind(oid)
            .fetch_all(&mut *tx)
            .await?;
            if let Some(first) = dependents.first() {
                return Err(refuse(
                    table,
                    format!("{first}: a zero-downtime rebuild cannot move it"),
                ));
            }
            let owned_sequences: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT n.nspname::text, s.relname::text, a.attname::text
                 FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 JOIN pg_namespace n ON n.oid = s.relnamespace
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.refobjid = $1::oid AND d.deptype = 'a'",
            )
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
            let owner: String = sqlx::query_scalar(
                "SELECT relowner::regrole::text FROM pg_class WHERE oid = $1::oid",
            )
            .bind(oid)
            .fetch_one(&mut *tx)
            .await?;
            exec(&mut tx, &format!("ALTER TABLE {copy} OWNER TO {owner}")).await?;
            let acl: Vec<(String, String, bool)> = sqlx::query_as(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                        a.privilege_type, a.is_grantable
                 FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.oid = $1::oid AND a.grantee <> c.relowner",
            )
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

    /// Makes the copies live (see the module doc); the projection is paused by `pauser`.
    pub(super) async fn switch(
        &self,
        pool: &PgPool,
        applier: &mut Applier,
        snapshot: &str,
        applied: &mut Vec<i64>,
        report: &mut Report,
        pauser: &str,
    ) -> Result<()> {
        let patience = applier.spec.tuning.max_processing + applier.spec.tuning.lease;
        for _attempt in 0..5 {
            // Batches claimed before the pause finish (or their lease runs out).
            super::wait_until_nothing_in_flight(pool, &self.projection, patience).await?;
            super::catch_up(pool, &self.projection, applier, snapshot, applied, report).await?;

            let mut tx = pool.begin().await?;
            exec(&mut tx, "SET LOCAL lock_timeout = '10s'").await?;
            let live: Vec<String> = self.tables.iter().map(Target::live).collect();
            exec(
                &mut tx,
                &format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", ")),
            )
            .await?;
            // Writers of the old tables have committed (their outcomes with them): anything
            // they did since the last round means another round.
            let late = projector_store::outbox::operator::done_after_snapshot(
                &mut *tx,
                &self.projection,
                snapshot,
                applied,
            )
            .await?;
            let in_flight =
                projector_store::outbox::operator::in_flight(&mut *tx, &self.projection).await?;
            if !late.is_empty() || in_flight > 0 {
                tx.rollback().await?;
                continue;
            }
            let retired = quote_ident(&format!("{}_old", self.schema));
            let schema_q = quote_ident(&self.schema);
            exec(&mut tx, &format!("CREATE SCHEMA {retired}")).await?;
            for t in &self.tables {
                exec(
                    &mut tx,
                    &format!("ALTER TABLE {} SET SCHEMA {retired}", t.live()),
                )
                .await?;
                exec(
                    &mut tx,
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
                        &mut tx,
                        &format!(
                            "ALTER SEQUENCE {moved} OWNED BY {}.{}",
                            t.live(),
                            quote_ident(column)
                        ),
                    )
                    .await?;
                    exec(
                        &mut tx,
                        &format!(
                            "ALTER SEQUENCE {moved} SET SCHEMA {}",
                            quote_ident(seq_schema)
                        ),
                    )
                    .await?;
                }
            }
            exec(&mut tx, &format!("DROP SCHEMA {retired} CASCADE")).await?;
            exec(&mut tx, &format!("DROP SCHEMA {schema_q} CASCADE")).await?;
            super::finish_switch(&mut tx, &self.projection, snapshot, pauser, report).await?;
            tx.commit().await?;
            report.switched = true;
            return Ok(());
        }
        Err(Error::Other(anyhow::anyhow!(
            "`{}` kept changing while switching (5 attempts); the old model stays",
            self.projection
        )))
    }
}
