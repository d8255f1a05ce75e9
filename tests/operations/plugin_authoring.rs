//! For plugin authors: `projector plugin new` writes projects (Rust and Python, with and without
//! capabilities, inside a cargo workspace or outside any) that build and pass their own test;
//! `projector plugin test` runs a component with recording stand-ins and reports a mismatch with
//! exit code 1 and a readable diff; usage errors exit 2 with one line naming the flag; and the
//! walkthrough in docs/plugins.md, executed command by command, ends in a projection that runs in
//! a real host against real Postgres.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `projector plugin new <args> --dir <dir>`, asserting success.
fn plugin_new(dir: &Path, args: &[&str]) {
    let mut all = vec!["plugin", "new"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", dir.to_str().unwrap()]);
    let out = run_projector(&all, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Two test-only economies before a scaffolded Rust project is built: its dependency versions
/// are pinned to plugins/Cargo.lock and its `target` is a link to plugins/target, so wit-bindgen
/// and serde_json are not rebuilt for every project. The build itself is the README's command.
fn share_plugins_target(project: &Path) {
    plugin("noop"); // plugins/target exists and holds the dependencies built
    let root = repo_root();
    std::fs::copy(root.join("plugins/Cargo.lock"), project.join("Cargo.lock")).unwrap();
    std::os::unix::fs::symlink(root.join("plugins/target"), project.join("target")).unwrap();
}

/// The component cargo makes for project `name`, removed first so a stale build never passes.
fn fresh_component_path(project: &Path, name: &str) -> PathBuf {
    let component = project
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let _ = std::fs::remove_file(&component);
    component
}

/// Builds a scaffolded Rust project with its README's command; returns the component.
fn cargo_build(project: &Path, name: &str) -> PathBuf {
    share_plugins_target(project);
    let component = fresh_component_path(project, name);
    let out = shell("cargo build --release --target wasm32-wasip2", project);
    assert!(out.status.success(), "cargo build: {}", output_text(&out));
    assert!(
        component.is_file(),
        "no component at {}",
        component.display()
    );
    component
}

/// Runs `command` with bash in `dir`, `projector` (the binary under test) first on PATH and
/// without the outer `cargo test`'s settings meant for the host build.
fn shell(command: &str, dir: &Path) -> Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_projector")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null());
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run bash")
}

/// `projector plugin test` on a scaffolded project's own test files.
fn own_test(project: &Path, component: &Path, extra: &[&str]) -> Output {
    let events = project.join("tests/events.jsonl");
    let expected = project.join("tests/expected.jsonl");
    let mut args = vec![
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--expect",
        expected.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // A Python component (18 MB) takes about a minute to compile when the 2-core machine is
    // busy with other builds: measured 49 s and 58 s under a load of 9.5 (2026-12-02).
    run_projector_within(&args, &[], secs(300))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_rust_scaffold_with_both_capabilities_builds_inside_a_cargo_workspace_and_passes_its_test() {
    // Inside this repository's root workspace (target/ is under it), which the project is not a
    // member of: its own `[workspace]` table keeps cargo from refusing it.
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let parent = tempfile::Builder::new()
        .prefix("plugin-authoring-")
        .tempdir_in(target)
        .unwrap();
    let project = parent.path().join("order-lines");
    plugin_new(
        &project,
        &[
            "order-lines",
            "--capability",
            "sql",
            "--capability",
            "search",
        ],
    );
    assert!(project.join("migrations/0001_order_lines.sql").is_file());
    let component = cargo_build(&project, "order-lines");

    let out = own_test(&project, &component, &["--config", "index=orders"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        text.starts_with("projector plugin test: TEST KIT"),
        "{text}"
    );
    assert!(text.contains("expectations met"), "{text}");
    // The scaffold's test events are about the plugin's own aggregate, named after the plugin.
    assert!(
        text.contains("event 1 00000000-0000-4000-8000-000000000001 order.created: success"),
        "{text}"
    );
    assert!(
        text.contains("call sql.execute \"INSERT INTO order_lines"),
        "{text}"
    );
    assert!(
        text.contains(
            "call search.bulk [index orders/order-1 v2 {\"title\":\"Dune Messiah\"}] -> [200]"
        ),
        "{text}"
    );

    // Without the config its search half answers bad_config: the test catches it, and the sql
    // write made before is marked as the host would treat it (the event's savepoint rolled back).
    let out = own_test(&project, &component, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("+ deterministic bad_config: the projection's config has no `index`"),
        "{text}"
    );
    assert!(text.contains("\"order-1\",\"{\\\"title\\\":\\\"Dune\\\"}\"] -> 1  (rolled back: the outcome is not success)"), "{text}");
}

#[test]
fn a_rust_scaffold_without_capabilities_builds_outside_any_workspace_and_passes_its_test() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("plain-plugin");
    plugin_new(&project, &["plain-plugin"]);
    assert!(!project.join("migrations").exists());
    assert!(project
        .join("vendor/projector-plugin-sdk/wit/plugin.wit")
        .is_file());
    let component = cargo_build(&project, "plain-plugin");
    // The SDK's bindings know every capability; the component imports only those it calls, so
    // this one needs no grant. (Import names are stored as text in the component.)
    let bytes = std::fs::read(&component).unwrap();
    for capability in ["projector:plugin/sql@", "projector:plugin/search@"] {
        assert!(
            !bytes
                .windows(capability.len())
                .any(|w| w == capability.as_bytes()),
            "the plain scaffold imports {capability}"
        );
    }
    let out = own_test(&project, &component, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stdout(&out).contains("3 events: 2 success, 0 transient, 1 deterministic"));
}

#[test]
fn a_python_scaffold_builds_with_componentize_py_and_passes_its_test() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("book-shelf");
    plugin_new(
        &project,
        &[
            "book-shelf",
            "--lang",
            "python",
            "--capability",
            "sql",
            "--capability",
            "search",
        ],
    );
    let component = componentize_py_with(
        &project.join("wit"),
        "projection",
        &project,
        "app",
        &project.join("book-shelf.wasm"),
    );
    let out = own_test(&project, &component, &["--config", "index=books"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(text.contains("plugin book-shelf@0.1.0+sha256:"), "{text}");
    assert!(
        text.contains("call sql.execute \"INSERT INTO book_shelf"),
        "{text}"
    );
    assert!(text.contains("expectations met"), "{text}");
}

const SCRIPTED_EVENTS: &str = r#"{"event_type": "book.created", "aggregate_id": "b-1", "payload": {"outcome": "success"}}
{"event_type": "book.created", "aggregate_id": "b-2", "payload": {"outcome": "transient", "reason": "es_429", "message": "slow down"}}
{"event_type": "book.created", "aggregate_id": "b-3", "payload": {"outcome": "trap"}}
{"event_type": "book.created", "aggregate_id": "b-4", "payload": {"outcome": "from_config"}}
"#;

#[test]
fn plugin_test_prints_outcomes_and_reports_a_mismatch_with_exit_1_and_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let events = write_file(dir.path(), "events.jsonl", SCRIPTED_EVENTS);
    let scripted = plugin("scripted");
    let good = write_file(
        dir.path(),
        "good.jsonl",
        r#"{"outcome": "success"}
{"outcome": "transient", "reason": "es_429", "message": "slow down"}
{"outcome": "transient", "reason": "plugin_trap"}
{"outcome": "success", "calls": []}
"#,
    );
    let args = |expect: &Path| {
        vec![
            "plugin".to_owned(),
            "test".into(),
            scripted.display().to_string(),
            "--events".into(),
            events.display().to_string(),
            "--config".into(),
            "outcome=success".into(),
            "--expect".into(),
            expect.display().to_string(),
        ]
    };
    let run = |expect: &Path| {
        let a = args(expect);
        run_projector(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };

    let out = run(&good);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", output_text(&out));
    // Outcomes as the host would record them: the trap is charged to its event only.
    assert!(text.contains("event 2 00000000-0000-4000-8000-000000000002 book.created: transient es_429: slow down"), "{text}");
    assert!(
        text.contains(
            "event 3 00000000-0000-4000-8000-000000000003 book.created: transient plugin_trap:"
        ),
        "{text}"
    );
    assert!(
        text.contains("event 4 00000000-0000-4000-8000-000000000004 book.created: success"),
        "{text}"
    );
    assert!(
        text.contains("4 events: 2 success, 2 transient, 0 deterministic"),
        "{text}"
    );

    // Event 2 expected to succeed, event 4 expected deterministic: two readable differences.
    let bad = write_file(
        dir.path(),
        "bad.jsonl",
        r#"{"outcome": "success"}
{"outcome": "success"}
{"outcome": "transient", "reason": "plugin_trap"}
{"outcome": "deterministic", "reason": "bad_config"}
{"outcome": "success"}
"#,
    );
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = stdout(&out);
    let diff = &text[text.find("MISMATCH").expect("a MISMATCH section")..];
    assert_eq!(
        diff,
        "MISMATCH: 3 of 5 events differ from the expectation (- expected, + actual)\n\
         \x20 the expectation file has 5 events, EVENTS has 4\n\
         \x20 event 2 (00000000-0000-4000-8000-000000000002 book.created):\n\
         \x20   outcome\n\
         \x20   - success\n\
         \x20   + transient es_429: slow down\n\
         \x20 event 4 (00000000-0000-4000-8000-000000000004 book.created):\n\
         \x20   outcome\n\
         \x20   - deterministic bad_config\n\
         \x20   + success\n\
         \x20 event 5: expected but not in the events file\n\
         \x20   - success\n"
            .replace("EVENTS", &events.display().to_string())
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: the run does not match the expectations in {}",
            bad.display()
        )
    );

    // --write-expect records the run; the recording is then met exactly.
    let recorded = dir.path().join("recorded.jsonl");
    let mut a = args(&recorded);
    a[7] = "--write-expect".into();
    let out = run_projector(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = std::fs::read_to_string(&recorded).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        (&second["outcome"], &second["reason"], &second["message"]),
        (&"transient".into(), &"es_429".into(), &"slow down".into()),
        "{text}"
    );
    let out = run(&recorded);
    assert!(
        stdout(&out).contains("expectations met"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn plugin_test_records_the_sql_calls_a_plugin_makes() {
    let dir = tempfile::tempdir().unwrap();
    let events = write_file(
        dir.path(),
        "events.jsonl",
        r#"{"event_type": "x", "payload": {"chronicleEventId": "00000000-0000-4000-8000-00000000000a", "actorUserId": "u-1", "entityType": "book", "entityId": "b-1", "eventType": "BookRenamed", "occurredAt": "2025-11-08T10:00:00Z", "after": {"title": "Dune"}}}
{"event_type": "x", "payload": {"entityType": "book"}}
"#,
    );
    let chronicle = plugin("chronicle_entries");
    let out = run_projector(
        &[
            "plugin",
            "test",
            chronicle.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("\"INSERT INTO chronicle_entries (id, actor_user_id,"),
        "{text}"
    );
    assert!(text.contains("[\"00000000-0000-4000-8000-00000000000a\",\"u-1\",\"book\",\"b-1\",\"BookRenamed\",\"u-1 BookRenamed book b-1\",null,\"{\\\"title\\\":\\\"Dune\\\"}\",\"2025-11-08T10:00:00Z\",null,null] -> 1"), "{text}");
    assert!(text.contains("event 2 00000000-0000-4000-8000-000000000002 x: deterministic bad_payload: missing chronicleEventId, actorUserId, entityId, eventType, occurredAt"), "{text}");
}

/// Runs `args` and asserts exit code 2 with exactly one stderr line containing `names`.
fn assert_usage_error(args: &[&str], names: &str) {
    let out = run_projector(args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        output_text(&out)
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        stderr.contains(names),
        "{args:?}: `{names}` not in {stderr}"
    );
}

#[test]
fn usage_errors_exit_2_with_one_line_naming_the_flag_or_value() {
    let dir = tempfile::tempdir().unwrap();
    let events = write_file(
        dir.path(),
        "e.jsonl",
        "{\"event_type\": \"a\", \"payload\": {}}\n",
    );
    let bad_line = write_file(
        dir.path(),
        "bad.jsonl",
        "{\"event_type\": \"a\", \"payload\": {}}\n{\"event_typ\": \"a\"}\n",
    );
    let noop = plugin("noop");
    let (noop, events_s) = (noop.to_str().unwrap(), events.to_str().unwrap());
    let not_wasm = write_file(dir.path(), "x.wasm", "not wasm");
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), "x").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "plugin", "test", noop, "--events", events_s, "--config", "index",
            ],
            "--config: `index` is not KEY=VALUE",
        ),
        (
            &[
                "plugin", "test", noop, "--events", events_s, "--config", "a=1", "--config", "a=2",
            ],
            "--config: `a` given twice",
        ),
        (
            &[
                "plugin",
                "test",
                noop,
                "--events",
                bad_line.to_str().unwrap(),
            ],
            "bad.jsonl:2: unknown field `event_typ`",
        ),
        (
            &["plugin", "test", noop, "--events", "/nonexistent/e.jsonl"],
            "--events: /nonexistent/e.jsonl: cannot read",
        ),
        (
            &[
                "plugin",
                "test",
                noop,
                "--events",
                events_s,
                "--expect",
                bad_line.to_str().unwrap(),
            ],
            "--expect: ",
        ),
        (
            &[
                "plugin",
                "test",
                not_wasm.to_str().unwrap(),
                "--events",
                events_s,
            ],
            "x.wasm: not a valid WebAssembly component",
        ),
        (&["plugin", "test", noop], "--events"),
        (
            &[
                "plugin",
                "test",
                noop,
                "--events",
                events_s,
                "--sql-table",
                "t",
            ],
            "--database-url",
        ),
        (
            &[
                "plugin",
                "test",
                noop,
                "--events",
                events_s,
                "--database-url",
                "postgres://nobody@127.0.0.1:1/none",
            ],
            "--database-url: cannot connect",
        ),
        (
            &["plugin", "new", "Books"],
            "NAME: `Books` is not a plugin name",
        ),
        (
            &["plugin", "new", "books", "--lang", "go"],
            "'go' for '--lang <LANG>'",
        ),
        (
            &["plugin", "new", "books", "--capability", "kafka"],
            "'kafka' for '--capability <CAPABILITIES>'",
        ),
        (
            &[
                "plugin",
                "new",
                "books",
                "--dir",
                occupied.to_str().unwrap(),
            ],
            "--dir: ",
        ),
    ];
    for (args, names) in cases {
        assert_usage_error(args, names);
    }
}

/// The `sh` block after the walkthrough marker in docs/plugins.md, one command per line.
fn walkthrough_commands() -> Vec<String> {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugins.md")).unwrap();
    let start = guide
        .find("<!-- walkthrough:")
        .expect("docs/plugins.md has a walkthrough marker");
    let block = &guide[start..];
    let body = &block[block.find("```sh\n").expect("an sh block after the marker") + 6..];
    let body = &body[..body.find("```").expect("the block ends")];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guide_walkthrough_gets_a_projection_running() {
    let commands = walkthrough_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    let work = tempfile::tempdir().unwrap();
    let mut cwd = work.path().to_path_buf();
    let mut component = None;
    // Every command verbatim; `cd` moves the working directory for the next ones.
    for command in &commands {
        if let Some(dir) = command.strip_prefix("cd ") {
            cwd = cwd.join(dir);
            continue;
        }
        if command.starts_with("cargo build") {
            share_plugins_target(&cwd);
            component = Some(fresh_component_path(&cwd, "book-titles"));
        }
        let out = shell(command, &cwd);
        assert!(
            out.status.success(),
            "`{command}` failed: {}",
            output_text(&out)
        );
    }
    let component = component.expect("the walkthrough builds a component");
    assert!(
        component.is_file(),
        "no component at {}",
        component.display()
    );
    let project = cwd;

    // Now what the guide says next: the migration, a config with the grant, a real host.
    let db = TestDb::new().await;
    db.migrate();
    let migration =
        std::fs::read_to_string(project.join("migrations/0001_book_titles.sql")).unwrap();
    sqlx::raw_sql(&migration).execute(&db.pool).await.unwrap();
    let config = write_file(
        work.path(),
        "projector.toml",
        format!(
            "[[projection]]\nname = \"book-titles\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"book_titles\"]\n",
            component.display()
        ),
    );
    let ids = insert_events(
        &db.pool,
        &[
            NewEvent::new(
                "book-titles",
                "book-1",
                serde_json::json!({"title": "Dune"}),
            ),
            NewEvent::new(
                "book-titles",
                "book-2",
                serde_json::json!({"title": "Emma"}),
            ),
        ],
    )
    .await;
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "book-titles", 2, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (2, 0));
    let rows: Vec<(uuid::Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_id, aggregate_id, payload FROM book_titles ORDER BY aggregate_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                ids[0],
                "book-1".to_owned(),
                serde_json::json!({"title": "Dune"})
            ),
            (
                ids[1],
                "book-2".to_owned(),
                serde_json::json!({"title": "Emma"})
            ),
        ]
    );
}
