//! Configuration errors: a bad setting, flag, plugin file or database makes `projector run` exit
//! with code 2 and one line on stderr naming the culprit, before it touches the database.

use crate::common;

use std::path::Path;

use common::*;

/// Runs `projector <args>` against a fresh database (unless `env` sets `DATABASE_URL`) and
/// asserts: exit code 2, exactly one line on stderr, naming one of `culprits`, and no table in
/// the database afterwards (no migration ran).
async fn refuses_to_start(args: &[&str], env: &[(&str, &str)], culprits: &[&str]) {
    let db = TestDb::new().await;
    let mut full_env = vec![("DATABASE_URL", db.url.as_str())];
    full_env.extend_from_slice(env);
    let out = run_projector(args, &full_env);

    assert_eq!(
        out.status.code(),
        Some(2),
        "`projector {}` exit status {}:\n{}",
        args.join(" "),
        out.status,
        output_text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        culprits.iter().any(|c| lines[0].contains(c)),
        "stderr does not name any of {culprits:?}: {}",
        lines[0]
    );
    assert_eq!(
        db.public_tables().await,
        Vec::<String>::new(),
        "the database was touched"
    );
}

fn scripted_spec() -> String {
    plugin_spec("p", &plugin("scripted"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_key_in_the_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "projector.toml",
        format!(
            "bogus_key = 1\n\n[[projection]]\nname = \"p\"\nplugin = \"{}\"\n",
            plugin("scripted").display()
        ),
    );
    refuses_to_start(&["run", "--config", path_str(&config)], &[], &["bogus_key"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_negative_lease_is_named() {
    refuses_to_start(
        &["run", "--plugin", &scripted_spec()],
        &[("OUTBOX_LEASE_SECONDS", "-5")],
        &["OUTBOX_LEASE_SECONDS", "lease"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_batch_size_is_named() {
    refuses_to_start(
        &["run", "--plugin", &scripted_spec()],
        &[("OUTBOX_BATCH_SIZE", "0")],
        &["OUTBOX_BATCH_SIZE", "batch"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_plugin_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-plugin.wasm");
    refuses_to_start(
        &["run", "--plugin", &plugin_spec("p", &missing)],
        &[],
        &[path_str(&missing)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_file_that_is_not_a_component_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = write_file(
        dir.path(),
        "garbage.wasm",
        b"\x00asm but not really a component \xff\xfe",
    );
    refuses_to_start(
        &["run", "--plugin", &plugin_spec("p", &garbage)],
        &[],
        &[path_str(&garbage)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_flag_without_a_name_is_named() {
    let path = plugin("scripted");
    refuses_to_start(&["run", "--plugin", path_str(&path)], &[], &["--plugin"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_flag_is_named() {
    refuses_to_start(
        &["run", "--plugin", &scripted_spec(), "--frobnicate"],
        &[],
        &["--frobnicate"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_named() {
    let out = run_projector(
        &["run", "--plugin", &scripted_spec()],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status {}:\n{}",
        out.status,
        output_text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].contains("DATABASE_URL"),
        "stderr does not name DATABASE_URL: {}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_that_reach_past_the_projection_are_named() {
    // Every index, system and hidden indices, index lists, and a zero sql bound.
    let dir = tempfile::tempdir().unwrap();
    for (grant, key) in [
        ("search_indices = [\"*\"]", "grants.search_indices"),
        ("search_indices = [\".kibana\"]", "grants.search_indices"),
        ("search_indices = [\".*\"]", "grants.search_indices"),
        ("search_indices = [\"_all\"]", "grants.search_indices"),
        (
            "search_indices = [\"books,secret\"]",
            "grants.search_indices",
        ),
        (
            "sql_tables = [\"t\"]\nsql_max_rows = 0",
            "grants.sql_max_rows",
        ),
    ] {
        let config = write_file(
            dir.path(),
            "projector.toml",
            format!(
                "[[projection]]\nname = \"p\"\nplugin = \"{}\"\n[projection.grants]\n{grant}\n",
                plugin("scripted").display()
            ),
        );
        refuses_to_start(
            &["run", "--config", path_str(&config)],
            &[
                ("ELASTIC_URL", "http://127.0.0.1:9"),
                ("OUTBOX_RUN_SECONDS", "1"),
            ],
            &[key],
        )
        .await;
    }
}
