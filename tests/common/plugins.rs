//! The guest components under test, built from plugins/ on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{output_text, repo_root};

static PLUGINS_BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// The path of `plugins/target/wasm32-wasip2/release/<name>.wasm`, building the plugins workspace
/// first (once per test process; cargo's own lock serialises concurrent test processes).
pub fn plugin(name: &str) -> PathBuf {
    let root = repo_root();
    let built = PLUGINS_BUILT.get_or_init(|| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .args(["build", "--manifest-path", "plugins/Cargo.toml"])
            .args(["--target", "wasm32-wasip2", "--release"])
            .stdin(Stdio::null());
        // The outer `cargo test` may carry settings meant for the host build, not for guests.
        for var in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
        ] {
            cmd.env_remove(var);
        }
        match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "building the plugins failed ({}):\n{}",
                out.status,
                output_text(&out)
            )),
            Err(e) => Err(format!("cannot run cargo to build the plugins: {e}")),
        }
    });
    if let Err(message) = built {
        panic!("{message}");
    }
    let path = root
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(path.is_file(), "no plugin component at {}", path.display());
    path
}

/// `NAME=PATH` for `--plugin`.
pub fn plugin_spec(projection: &str, path: &Path) -> String {
    format!("{projection}={}", path.display())
}

/// The `stamps` read model in `db` (one row per applied event, keyed by the event id), and a
/// config in a temp dir running projection `stamp` from `plugin_path` (a `stamp-v*` plugin) with
/// the `sql` grant on it.
///
/// The sink counts second applications itself: a trigger on `stamps` (not something the plugin
/// or the host can see or skip) turns an insert of an event id already stamped into a row of
/// `stamp_duplicates` instead of a primary-key error, so a second application commits like the
/// first one would have and shows up in [`stamp_duplicates`] (rather than as a failed event).
pub async fn stamp_projection(
    db: &super::TestDb,
    plugin_path: &str,
) -> (tempfile::TempDir, PathBuf) {
    sqlx::raw_sql(
        "CREATE TABLE stamps (event_id uuid PRIMARY KEY, seq bigint NOT NULL, version text NOT NULL);
         CREATE TABLE stamp_duplicates (
             event_id uuid NOT NULL, version text NOT NULL, at timestamptz NOT NULL DEFAULT now());
         CREATE FUNCTION count_second_stamp() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM stamps WHERE event_id = NEW.event_id) THEN
                 INSERT INTO stamp_duplicates (event_id, version) VALUES (NEW.event_id, NEW.version);
                 RETURN NULL;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER count_second_stamp BEFORE INSERT ON stamps
             FOR EACH ROW EXECUTE FUNCTION count_second_stamp();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = super::write_file(
        dir.path(),
        "stamp.toml",
        format!(
            "[[projection]]\nname = \"stamp\"\nplugin = \"{plugin_path}\"\n[projection.grants]\nsql_tables = [\"stamps\"]\n"
        ),
    );
    (dir, config)
}

/// How many times an event already stamped was applied again (committed), as the `stamps` sink
/// counted it (see [`stamp_projection`]).
pub async fn stamp_duplicates(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stamp_duplicates")
        .fetch_one(pool)
        .await
        .expect("count stamp_duplicates")
}
