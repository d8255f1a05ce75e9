//! Sandbox limits: a plugin that never returns is interrupted at its batch deadline
//! (`plugin_timeout`), one that allocates without bound is stopped at its memory cap
//! (`plugin_oom`); either way the host keeps serving its other projections and stays ready.

use crate::common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// A config with the misbehaving projection and a well-behaved `steady` one beside it.
fn config(dir: &std::path::Path, name: &str, plugin_name: &str, extra: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "sandbox.toml",
        format!(
            "[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\nmax_attempts = 1\n{extra}\n\
             [[projection]]\nname = \"steady\"\nplugin = \"{}\"\n",
            plugin(plugin_name).display(),
            plugin("noop").display()
        ),
    )
}

async fn insert_side_by_side(db: &TestDb, name: &str, bad: usize, good: usize) {
    let mut events: Vec<NewEvent> = (0..bad)
        .map(|i| NewEvent::new(name, format!("bad-{i}"), json!({})))
        .collect();
    events.extend((0..good).map(|i| NewEvent::new("steady", format!("ok-{i}"), json!({}))));
    insert_events(&db.pool, &events).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_plugin_is_interrupted_at_its_deadline_and_others_keep_flowing() {
    let db = TestDb::new().await;
    db.migrate();
    insert_side_by_side(&db, "runaway", 2, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "runaway",
        "runaway",
        "max_processing_seconds = 1",
    );
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[("OUTBOX_LEASE_SECONDS", "5")],
    );
    host.wait_ready(PATIENCE);

    // Watch the runaway batch: from its claim to its failure takes the deadline, plus at most 1 s.
    let mut claimed_at = None;
    let mut failed_after = None;
    let watch = Instant::now();
    while watch.elapsed() < PATIENCE && failed_after.is_none() {
        let rows = common::events(&db.pool, "runaway").await;
        if claimed_at.is_none() && rows.iter().any(|r| r.status == "processing") {
            claimed_at = Some(Instant::now());
        }
        if let (Some(at), true) = (claimed_at, rows.iter().all(|r| r.status == "failed")) {
            failed_after = Some(at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_after = failed_after.expect("the runaway events end failed");
    assert!(
        failed_after <= Duration::from_secs(2),
        "interrupted after {failed_after:?} (deadline 1 s)"
    );
    for row in common::events(&db.pool, "runaway").await {
        assert_eq!(
            row.error_reason.as_deref(),
            Some("plugin_timeout"),
            "{row:?}"
        );
    }
    let counts = wait_settled(&db.pool, "steady", 200, PATIENCE).await;
    assert_eq!(counts.done, 200);
    assert!(host.is_ready(), "/readyz stays ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_stopped_at_its_cap_inside_the_sandbox() {
    let db = TestDb::new().await;
    db.migrate();
    insert_side_by_side(&db, "hog", 1, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "hog", "hog", "memory_limit_mib = 16");
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "hog", 1, PATIENCE).await;
    assert_eq!(counts.failed, 1);
    let row = &common::events(&db.pool, "hog").await[0];
    assert_eq!(row.error_reason.as_deref(), Some("plugin_oom"), "{row:?}");
    assert!(
        row.error.as_deref().unwrap_or("").contains("16 MiB"),
        "{row:?}"
    );
    let counts = wait_settled(&db.pool, "steady", 200, PATIENCE).await;
    assert_eq!(counts.done, 200);
    assert!(host.is_ready(), "/readyz stays ok");
}

/// What the `ambient` probe aims at: the test's real Postgres, a listener the test opened (it
/// counts the connections it accepts) and a file the test wrote.
struct Targets {
    connect: String,
    read: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

fn targets(db: &TestDb) -> Targets {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pg_port = db
        .url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port in the database URL")
        .to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret.txt", "the sandbox must not read this");
    Targets {
        connect: format!("127.0.0.1:{pg_port},127.0.0.1:{port}"),
        read: secret.display().to_string(),
        accepted,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_finds_no_environment_files_sockets_or_stdio() {
    use std::sync::atomic::Ordering;
    let db = TestDb::new().await;
    db.migrate();
    let aim = targets(&db);
    insert_events(&db.pool, &[NewEvent::new("ambient", "a", json!({}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "ambient.toml",
        format!(
            "[[projection]]\nname = \"ambient\"\nplugin = \"{}\"\n[projection.config]\nconnect = \"{}\"\nread = \"{}\"\n",
            plugin("ambient").display(),
            aim.connect,
            aim.read
        ),
    );
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[("SECRET_IN_HOST_ENV", "should-not-leak")],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, "ambient", 1, PATIENCE).await;
    let row = &common::events(&db.pool, "ambient").await[0];
    assert_eq!(row.status, "done", "the plugin reached: {:?}", row.error);
    assert_eq!(
        aim.accepted.load(Ordering::SeqCst),
        0,
        "the test's listener was reached"
    );
    let log = host.log_text();
    assert!(
        !log.contains("AMBIENT-STDOUT-LEAK") && !log.contains("AMBIENT-STDERR-LEAK"),
        "plugin stdio reached the host's output"
    );
}

/// The positive control for the probe above: the same component, run by a runtime that *does*
/// grant network and a directory, reports every target as reachable. So the probe can see a
/// leak, and "done" above means there was none.
#[tokio::test(flavor = "multi_thread")]
async fn the_ambient_probe_detects_access_when_a_runtime_grants_it() {
    use std::sync::atomic::Ordering;
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

    mod guest {
        wasmtime::component::bindgen!({ path: "wit", world: "plugin" });
    }
    use guest::projector::plugin::{config, log, types};

    struct Open {
        wasi: WasiCtx,
        table: ResourceTable,
        config: Vec<(String, String)>,
    }
    impl WasiView for Open {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }
    impl types::Host for Open {}
    impl log::Host for Open {
        fn log(&mut self, _: log::Level, _: Option<String>, _: String) {}
    }
    impl config::Host for Open {
        fn get(&mut self, key: String) -> Option<String> {
            self.config
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        }
        fn entries(&mut self) -> Vec<(String, String)> {
            self.config.clone()
        }
    }

    let db = TestDb::new().await;
    let aim = targets(&db);
    let secret_dir = std::path::Path::new(&aim.read).parent().unwrap().to_owned();
    let answer = tokio::task::spawn_blocking({
        let (connect, read) = (aim.connect.clone(), aim.read.clone());
        move || {
            let engine = wasmtime::Engine::default();
            let component = Component::from_file(&engine, plugin("ambient")).unwrap();
            let mut linker = Linker::<Open>::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
            guest::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
                .unwrap();
            let mut wasi = WasiCtx::builder();
            wasi.inherit_network().allow_tcp(true);
            let dir = secret_dir.to_str().unwrap();
            wasi.preopened_dir(dir, dir, FsPerms::ReadOnly).unwrap();
            let state = Open {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                config: vec![("connect".into(), connect), ("read".into(), read)],
            };
            let mut store = wasmtime::Store::new(&engine, state);
            let plugin = guest::Plugin::instantiate(&mut store, &component, &linker).unwrap();
            let event = types::Event {
                id: uuid::Uuid::new_v4().to_string(),
                seq: 1,
                projection: "ambient".into(),
                event_type: "test.event".into(),
                aggregate_type: String::new(),
                aggregate_id: "a".into(),
                payload: "{}".into(),
                occurred_at: "2026-01-01T00:00:00Z".into(),
                attempt: 1,
                headers: Vec::new(),
            };
            plugin
                .projector_plugin_projection()
                .call_handle(&mut store, &[event])
                .unwrap()
        }
    })
    .await
    .unwrap();
    let message = match &answer[..] {
        [types::Outcome::Deterministic(f)] if f.reason == "ambient_authority" => f.message.clone(),
        other => panic!("the probe saw nothing with access granted: {other:?}"),
    };
    for target in aim.connect.split(',') {
        assert!(
            message.contains(&format!("a TCP socket to {target}")),
            "{message}"
        );
    }
    assert!(message.contains(&format!("file {}", aim.read)), "{message}");
    assert!(
        aim.accepted.load(Ordering::SeqCst) >= 1,
        "the listener saw the probe"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_make_the_host_copy_one_buffer_many_times() {
    // 12 outcomes whose messages all alias one 8 MiB buffer: 96 MiB if the host copied them
    // all, from a plugin holding 8 MiB of a 32 MiB cap.
    let db = TestDb::new().await;
    db.migrate();
    insert_side_by_side(&db, "flood", 1, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "flood",
        "alias_flood",
        "memory_limit_mib = 32\n[projection.config]\ncount = \"12\"\nmib = \"8\"",
    );
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let idle_peak = peak_rss_mib(host.pid());
    let counts = wait_settled(&db.pool, "flood", 1, PATIENCE).await;
    assert_eq!(counts.failed, 1);
    let row = &common::events(&db.pool, "flood").await[0];
    assert_eq!(row.error_reason.as_deref(), Some("plugin_trap"), "{row:?}");
    assert!(
        row.error.as_deref().unwrap_or("").contains("too much data"),
        "{row:?}"
    );
    let grew = peak_rss_mib(host.pid()) - idle_peak;
    println!("host peak RSS grew {grew:.1} MiB against 96 MiB of aliased messages");
    assert!(grew < 60.0, "peak RSS grew {grew:.1} MiB");
    assert_eq!(
        wait_settled(&db.pool, "steady", 50, PATIENCE).await.done,
        50
    );
    assert!(host.is_ready(), "/readyz stays ok");
}
