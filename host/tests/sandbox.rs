//! Sandbox limits: a plugin that never returns is interrupted at its batch deadline
//! (`plugin_timeout`), one that allocates without bound is stopped at its memory cap
//! (`plugin_oom`); either way the host keeps serving its other projections and stays ready.

mod common;

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

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_finds_no_environment_files_sockets_or_stdio() {
    let db = TestDb::new().await;
    db.migrate();
    insert_events(&db.pool, &[NewEvent::new("ambient", "a", json!({}))]).await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("ambient", &plugin("ambient"))],
        &[("SECRET_IN_HOST_ENV", "should-not-leak")],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, "ambient", 1, PATIENCE).await;
    let row = &common::events(&db.pool, "ambient").await[0];
    assert_eq!(row.status, "done", "the plugin reached: {:?}", row.error);
    let log = host.log_text();
    assert!(
        !log.contains("AMBIENT-STDOUT-LEAK") && !log.contains("AMBIENT-STDERR-LEAK"),
        "plugin stdio reached the host's output"
    );
}
