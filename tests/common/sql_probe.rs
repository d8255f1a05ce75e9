//! The `sql-probe` scenarios' world: an `allowed` table the projection is granted, a `secret`
//! table (and a function that would wipe it) it is not, and a config running `sql-probe` as
//! projection `probe`. Used by the sql capability and hostile-sql scenarios.

use super::{plugin, write_file, TestDb};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SCHEMA: &str = "
CREATE TABLE allowed (id int PRIMARY KEY, note text);
CREATE TABLE secret (id int PRIMARY KEY, note text);
INSERT INTO secret VALUES (1, 'keep me');
CREATE FUNCTION wipe_secret() RETURNS int LANGUAGE sql AS $$ DELETE FROM secret RETURNING 1 $$;
";

/// Migrates `db` and creates the probe's tables.
pub async fn probe_setup(db: &TestDb) {
    db.migrate();
    sqlx::raw_sql(SCHEMA)
        .execute(&db.pool)
        .await
        .expect("test schema");
}

/// A config running `sql-probe` as projection `probe`, granted `allowed` only, with `extra`
/// lines under `[projection.grants]`.
pub fn probe_config(dir: &Path, extra: &str) -> PathBuf {
    write_file(
        dir,
        "probe.toml",
        format!(
            "[[projection]]\nname = \"probe\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"allowed\"]\n{extra}",
            plugin("sql_probe").display()
        ),
    )
}

/// A probe payload running `list` (statement, params) in order.
pub fn statements(list: &[(&str, Value)]) -> Value {
    json!({"statements": list.iter().map(|(sql, params)| json!({"sql": sql, "params": params})).collect::<Vec<_>>()})
}

/// The ids in `allowed`, sorted.
pub async fn allowed_ids(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM allowed ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// The rows of `secret`, sorted.
pub async fn secret_rows(db: &TestDb) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT id, note FROM secret ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}
