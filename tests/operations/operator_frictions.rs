//! What a new operator runs into, each fixed and held here: `projector status` reads without
//! migrating (and refuses a database that is not migrated, naming `projector migrate`); logs
//! carry no colour codes and no Postgres notices when stderr is not a terminal; `projector
//! versions list` needs no token, as the API's reads need none; a file that is not a component
//! is refused in words, at start and through the admin API; the README's procedure for fixing a
//! bad event's data and replaying it works as written; and an interrupted `projector bench`
//! drops the database and roles it made.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An ANSI escape sequence's start.
const ESCAPE: &str = "\x1b[";

/// The token of the hosts started here.
const TOKEN: &str = "operator-frictions-token";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `stderr` is plain: no colour codes, no Postgres notice relayed by sqlx.
fn assert_plain(what: &str, stderr: &str) {
    assert!(
        !stderr.contains(ESCAPE),
        "{what}: ANSI escapes in a redirected stderr:\n{stderr:?}"
    );
    assert!(
        !stderr.contains("_sqlx_migrations") && !stderr.contains("sqlx::postgres::notice"),
        "{what}: a Postgres notice reached the operator:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading without migrating

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_without_migrating_and_names_projector_migrate_when_the_schema_is_not_there() {
    let db = TestDb::new().await;
    let status = || run_projector(&["status", "--database-url", &db.url], &[]);

    // A database nobody migrated: refused, and left exactly as it was.
    let out = status();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("has no projector schema") && stderr.contains("`projector migrate`"),
        "{stderr}"
    );
    assert_eq!(
        db.public_tables().await,
        Vec::<String>::new(),
        "status created tables"
    );

    // A first migration that stopped after creating sqlx's table: still no schema to read.
    sqlx::raw_sql(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("create the migrations table");
    let out = status();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert_eq!(
        db.public_tables().await,
        vec!["_sqlx_migrations".to_owned()]
    );

    // `projector migrate` finishes it; Postgres's "already exists, skipping" notice about that
    // table stays between Postgres and sqlx, and the log line is plain text.
    let out = run_projector(&["migrate", "--database-url", &db.url], &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("database migrated"), "{stderr}");
    assert_plain("projector migrate", &stderr);

    // A database missing this projector's latest migration (migrated by an older one).
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("latest migration");
    sqlx::raw_sql(&format!(
        "CREATE TABLE saved_migration AS SELECT * FROM _sqlx_migrations WHERE version = {latest};
         DELETE FROM _sqlx_migrations WHERE version = {latest};"
    ))
    .execute(&db.pool)
    .await
    .expect("hide the latest migration");
    let out = status();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("lacks migrations {latest:04}"))
            && stderr.contains("`projector migrate`"),
        "{stderr}"
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
            .bind(latest)
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(applied, 0, "status applied a migration");
    sqlx::raw_sql(
        "INSERT INTO _sqlx_migrations SELECT * FROM saved_migration; DROP TABLE saved_migration;",
    )
    .execute(&db.pool)
    .await
    .expect("restore the latest migration");

    // Migrated: the table, and nothing else on stderr.
    let out = status();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("projection "),
        "{}",
        output_text(&out)
    );
    assert_plain("projector status", &stderr_of(&out));
}

#[test]
fn a_host_logging_text_into_a_pipe_writes_no_colour_codes() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let db = rt.block_on(TestDb::new());
    let port = free_port().to_string();
    let spec = plugin_spec("plain", &plugin("noop"));
    let out = run_projector(
        &["run", "--log-format", "text", "--plugin", &spec],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("OUTBOX_HTTP_PORT", port.as_str()),
            ("OUTBOX_HTTP_HOST", "127.0.0.1"),
            ("OUTBOX_RUN_SECONDS", "1"),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("projector started") && stderr.contains(" INFO "),
        "{stderr}"
    );
    assert_plain("projector run --log-format text", &stderr);
}

// ---------------------------------------------------------------------------------------------
// `projector versions` and readable component errors

#[tokio::test(flavor = "multi_thread")]
async fn versions_list_needs_no_token_and_load_without_one_is_refused_before_any_request() {
    let db = TestDb::new().await;
    let spec = plugin_spec("p", &plugin("noop"));
    let mut host = Host::start(
        &db.url,
        &["--plugin", &spec],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);
    let admin_url = format!("http://127.0.0.1:{}", host.port);

    let out = run_projector(
        &[
            "versions",
            "list",
            "--projection",
            "p",
            "--admin-url",
            &admin_url,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        listed.to_string().contains("noop@"),
        "the active version is listed: {listed}"
    );
    // PROJECTOR_ADMIN_URL names the host as well as the flag does.
    let out = run_projector(
        &["versions", "list", "--projection", "p"],
        &[("PROJECTOR_ADMIN_URL", admin_url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));

    let versions_before = versions_recorded(&db.pool).await;
    let noop = plugin("noop");
    let out = run_projector(
        &[
            "versions",
            "load",
            "--projection",
            "p",
            noop.to_str().expect("UTF-8 path"),
            "--admin-url",
            &admin_url,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("OUTBOX_ADMIN_TOKEN") && stderr.contains("--token"),
        "{stderr}"
    );
    assert_eq!(versions_recorded(&db.pool).await, versions_before);
    host.sigterm();
    host.wait_exit(PATIENCE);
}

async fn versions_recorded(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM plugin_versions")
        .fetch_one(pool)
        .await
        .expect("count plugin versions")
}

/// A core module with nothing in it: the WebAssembly header, version 1.
const EMPTY_CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_component_is_refused_in_words_at_start_and_through_the_api() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The head of a real executable (the whole debug binary is over the API's 64 MiB body limit).
    let head: Vec<u8> = std::fs::read(env!("CARGO_BIN_EXE_projector"))
        .expect("read the projector binary")
        .into_iter()
        .take(64 * 1024)
        .collect();
    let executable = write_file(dir.path(), "projector.wasm", head);
    let executable = executable.to_str().expect("UTF-8 path");
    let core_module = write_file(dir.path(), "module.wasm", EMPTY_CORE_MODULE);
    let core_module = core_module.to_str().expect("UTF-8 path");
    let elf_words = "file starts with bytes 7f 45 4c 46 (an ELF executable?)";
    let core_words = "a core WebAssembly module, not a component";

    // At start: exit 2, the plugin's path and what the file is.
    for (file, words) in [(executable, elf_words), (core_module, core_words)] {
        let out = run_projector(
            &["run", "--plugin", &format!("p={file}")],
            &[("DATABASE_URL", db.url.as_str())],
        );
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(file) && stderr.contains(words),
            "{file}: {stderr}"
        );
        assert!(
            !stderr.contains("0x"),
            "a debug-printed byte array: {stderr}"
        );
    }
    assert!(
        output_text(&run_projector(
            &["run", "--plugin", &format!("p={core_module}")],
            &[("DATABASE_URL", db.url.as_str())]
        ))
        .contains("wasm32-wasip2"),
        "the core-module refusal says how to build a component"
    );

    // Through the admin API (`projector versions load`): 422 with the same words, the active
    // version keeps serving.
    let spec = plugin_spec("p", &plugin("noop"));
    let mut host = Host::start(
        &db.url,
        &["--plugin", &spec],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);
    let admin_url = format!("http://127.0.0.1:{}", host.port);
    for (file, words) in [(executable, elf_words), (core_module, core_words)] {
        let out = run_projector(
            &[
                "versions",
                "load",
                "--projection",
                "p",
                file,
                "--admin-url",
                &admin_url,
                "--token",
                TOKEN,
            ],
            &[],
        );
        assert!(!out.status.success(), "{}", output_text(&out));
        let answer: Value = serde_json::from_slice(&out.stdout).expect("the host's JSON answer");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{file}: {answer}");
        assert!(stderr_of(&out).contains("422"), "{}", output_text(&out));
    }
    let (status, body) = host.send("GET", "/projections/p/plugins", None, b"");
    assert_eq!(status, 200);
    assert!(body.to_string().contains("noop@"), "{body}");
    assert!(host.is_ready());
    host.sigterm();
    host.wait_exit(PATIENCE);
}

// ---------------------------------------------------------------------------------------------
// README, "Fixing a bad event and replaying it"

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_procedure_fixes_a_bad_events_payload_and_replays_it_to_done() {
    let db = TestDb::new().await;
    db.migrate();
    let ids = insert_events(
        &db.pool,
        &[
            NewEvent::new(
                "books",
                "book-42",
                json!({"outcome": "deterministic", "title": ""}),
            ),
            // The aggregate's next event waits behind the failed one.
            NewEvent::new("books", "book-42", json!({"outcome": "success"})),
        ],
    )
    .await;
    let spec = plugin_spec("books", &plugin("scripted"));
    let mut host = Host::start(&db.url, &["--plugin", &spec], &[]);
    host.wait_ready(PATIENCE);
    wait_until("the bad event fails", PATIENCE, async || {
        status_counts(&db.pool, "books").await.failed == 1
    })
    .await;
    let projector = |args: &[&str]| {
        let out = run_projector(args, &[("DATABASE_URL", db.url.as_str())]);
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // 1. Find it: status, then the failed rows.
    let status: Value =
        serde_json::from_str(&projector(&["status", "--projection", "books", "--json"]))
            .expect("status JSON");
    assert!(status.to_string().contains("bad_payload"), "{status}");
    let failed: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT id, error_reason, error FROM outbox_events
          WHERE projection = 'books' AND status = 'failed' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .expect("failed rows");
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].0, failed[0].1.as_str()), (ids[0], "bad_payload"));

    // 2. Correct its payload (a failed row only: nothing else holds it).
    let fixed = sqlx::query(
        "UPDATE outbox_events SET payload = jsonb_set(payload, '{outcome}', '\"success\"')
          WHERE id = $1 AND projection = 'books' AND status = 'failed'",
    )
    .bind(ids[0])
    .execute(&db.pool)
    .await
    .expect("correct the payload");
    assert_eq!(fixed.rows_affected(), 1);

    // 3. Replay it (dry run first), 4. it ends done, and its aggregate continues.
    let id = ids[0].to_string();
    let replay = |dry: bool| {
        let mut args = vec![
            "replay",
            "--projection",
            "books",
            "--ids",
            &id,
            "--by",
            "ops",
            "--reason",
            "payload corrected",
        ];
        if dry {
            args.push("--dry-run");
        }
        serde_json::from_str::<Value>(&projector(&args)).expect("replay JSON")
    };
    assert_eq!(replay(true)["event_ids"], json!([id]));
    assert_eq!(
        status_counts(&db.pool, "books").await.failed,
        1,
        "a dry run moves nothing"
    );
    assert_eq!(replay(false)["event_ids"], json!([id]));
    let counts = wait_settled(&db.pool, "books", 2, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (2, 0), "{counts:?}");
    let rows = common::events(&db.pool, "books").await;
    assert_eq!(rows[0].payload["outcome"], "success");
    host.sigterm();
    host.wait_exit(PATIENCE);
}

// ---------------------------------------------------------------------------------------------
// An interrupted `projector bench`

/// How long the bench may take to reach a stage (the drains before it run on a shared machine).
const BENCH_PATIENCE: Duration = Duration::from_secs(240);

/// A `projector bench` child whose stderr is collected line by line as it comes.
struct Bench {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn start(db: &TestDb, es: &Osmem) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = plugin("noop").parent().expect("plugin dir").to_path_buf();
        let mut child = projector_test_support::projector_command(env!("CARGO_BIN_EXE_projector"))
            .args(["bench", "--events", "2000", "--search-events", "200"])
            .args(["--long-events", "100", "--sweep-batch-sizes", "10"])
            .args(["--plugins-dir", plugins.to_str().expect("UTF-8 path")])
            .arg("--json")
            .arg(dir.path().join("report.json"))
            .args(["--database-url", &db.url, "--elastic-url", &es.url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn projector bench");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("not poisoned").push(line);
            }
        });
        Bench {
            child,
            stderr,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        self.stderr.lock().expect("not poisoned").join("\n")
    }

    /// The name of the database the run made, once it says so.
    async fn database(&self) -> String {
        let mut name = None;
        wait_until("the bench creates its database", PATIENCE, async || {
            name = self
                .text()
                .split_whitespace()
                .find_map(|w| w.strip_prefix("database="))
                .map(str::to_owned);
            name.is_some()
        })
        .await;
        name.expect("waited for it")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.child.kill().ok();
                panic!(
                    "projector bench still running {timeout:?} after the signal:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bench {
    /// A failing scenario still lets the bench clean up after itself (SIGINT, as tested above)
    /// rather than leave its database on the shared cluster.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGINT);
            let deadline = Instant::now() + PATIENCE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

async fn database_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("pg_database")
}

/// Which of `roles` exist on the server.
async fn existing_roles(pool: &sqlx::PgPool, roles: &[String]) -> Vec<String> {
    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
        .bind(roles)
        .fetch_all(pool)
        .await
        .expect("pg_roles")
}

/// Processes whose command line mentions `needle` (the bench's child hosts name its work dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_bench_drops_its_database_roles_and_hosts_and_exits_130() {
    let _alone = crate::bench_smoke::BENCH_RUNS.lock().await;
    let db = TestDb::new().await;
    let es = Osmem::start();
    let mut bench = Bench::start(&db, &es);
    let name = bench.database().await;

    // Wait until its `sql` projection's host has made its login role and a rebuild source role
    // (one per projection, named from the database and projection names): the run is deep in,
    // with roles to clean up.
    let bench_url = projector_test_support::with_database(&db.url, &name);
    let bench_pool = sqlx::PgPool::connect(&bench_url).await.expect("connect");
    let mut roles: Vec<String> = Vec::new();
    wait_until(
        "the chronicle host creates its roles",
        BENCH_PATIENCE,
        async || {
            roles = sqlx::query_scalar("SELECT role::text FROM projector_sql_roles")
                .fetch_all(&bench_pool)
                .await
                .unwrap_or_default();
            let projections: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT projection FROM plugin_versions")
                    .fetch_all(&bench_pool)
                    .await
                    .unwrap_or_default();
            let sources: Vec<String> = projections
                .iter()
                .map(|p| projector_store::sql_roles::source_role_name(&name, p))
                .collect();
            let made = !existing_roles(&db.pool, &sources).await.is_empty();
            roles.extend(sources);
            made && roles.iter().any(|r| !r.starts_with("projector_src_"))
        },
    )
    .await;
    bench_pool.close().await;
    // ... and while one of its child hosts runs (they name the run's work dir).
    let work_dir = format!("projector-bench-{}", bench.child.id());
    wait_until("a child host runs", BENCH_PATIENCE, async || {
        !processes_mentioning(&work_dir).is_empty()
    })
    .await;

    bench.signal(libc::SIGINT);
    let status = bench.wait_exit(PATIENCE);
    let stderr = bench.text();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert!(
        !database_exists(&db.pool, &name).await,
        "{name} is left behind"
    );
    let left = existing_roles(&db.pool, &roles).await;
    assert!(left.is_empty(), "roles left behind: {left:?}");
    assert_eq!(
        processes_mentioning(&work_dir),
        Vec::<String>::new(),
        "child hosts left running"
    );
    assert!(
        !std::env::temp_dir().join(&work_dir).exists(),
        "work dir left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bench_terminated_right_after_creating_its_database_drops_it_and_exits_143() {
    let _alone = crate::bench_smoke::BENCH_RUNS.lock().await;
    let db = TestDb::new().await;
    let es = Osmem::start();
    let mut bench = Bench::start(&db, &es);
    let name = bench.database().await;
    bench.signal(libc::SIGTERM);
    let status = bench.wait_exit(PATIENCE);
    let stderr = bench.text();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert!(
        !database_exists(&db.pool, &name).await,
        "{name} is left behind"
    );
}
