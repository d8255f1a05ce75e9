//! What a Python projection costs per event compared with the same projection in Rust: the
//! chronicle projection (`plugins/chronicle-entries`) against its Python port
//! (`examples/python/chronicle_entries`, built with componentize-py). A measurement, not a check:
//! ignored by default, run it with
//!
//! ```sh
//! scripts/test --test plugin_cost -- --ignored --nocapture
//! ```
//!
//! Two figures per plugin, both with one event per `handle()` call (how the host runs `sql`
//! plugins). The figures quoted in docs/plugins.md are a one-off run of this test (dated and
//! pinned to a commit there), not something it checks.
//! - **plugin only**: `projector plugin test`'s runtime path in this process, the `sql` capability
//!   answered by the test kit's in-memory stand-in; the median over three runs of [`EVENTS`]
//!   events of the time spent in `handle()` (payload parsing, building the statement, crossing
//!   the component boundary both ways).
//! - **end to end**: a real `projector run` against real Postgres applying [`EVENTS`] events,
//!   from the first event inserted to the last one settled (claiming, a savepoint per event, the
//!   upsert, settling); per event = wall time / events.
//!
//! - **harness floor**: the `noop` plugin (answers success, touches nothing) through the same
//!   plugin-only path: what the test kit itself costs per event, to subtract.
//!
//! The binary under test is the dev-profile build `cargo test` makes (dependencies, wasmtime and
//! Cranelift among them, at opt-level 2; the projector crate itself unoptimised).

use crate::common;

use common::*;
use projector_authoring::testkit;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const EVENTS: usize = 2000;

fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({
        "chronicleEventId": uuid::Uuid::new_v4().to_string(),
        "actorUserId": format!("user-{}", i % 7),
        "entityType": "book",
        "entityId": format!("book-{}", i % 50),
        "eventType": "BookRenamed",
        "before": {"title": format!("v{}", i)},
        "after": {"title": format!("v{}", i + 1)},
        "occurredAt": "2025-11-08T10:00:00Z",
        "requestId": format!("req-{i}"),
        "reason": null,
    })
}

/// Median µs per event spent in `handle()` over three test-kit runs.
fn plugin_only(component: &Path, dir: &Path) -> f64 {
    let lines: Vec<String> = (0..EVENTS)
        .map(|i| {
            serde_json::json!({"event_type": "book.renamed", "aggregate_id": format!("book:{}", i % 50),
                               "payload": payload(i)})
            .to_string()
        })
        .collect();
    let file = write_file(dir, "events.jsonl", lines.join("\n"));
    let mut per_event = Vec::new();
    for _ in 0..3 {
        let events = testkit::read_events(&file).unwrap();
        let run = testkit::run(component, events, BTreeMap::new(), "chronicle").unwrap();
        assert!(
            run.results
                .iter()
                .all(|r| r.verdict == projector_store::outbox::Verdict::Success),
            "every event succeeds"
        );
        per_event.push(run.handle_time.as_secs_f64() * 1e6 / EVENTS as f64);
    }
    median(&per_event)
}

/// µs per event for a real host applying [`EVENTS`] events through Postgres.
async fn end_to_end(component: &Path, dir: &Path) -> f64 {
    let db = TestDb::new().await;
    db.migrate();
    create_chronicle_tables(&db.pool).await;
    let config = write_file(
        dir,
        "chronicle.toml",
        format!(
            "[[projection]]\nname = \"chronicle\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"chronicle_entries\"]\n",
            component.display()
        ),
    );
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let events: Vec<NewEvent> = (0..EVENTS)
        .map(|i| NewEvent::new("chronicle", format!("book:{}", i % 50), payload(i)))
        .collect();
    let started = Instant::now();
    insert_events(&db.pool, &events).await;
    let counts = wait_settled(
        &db.pool,
        "chronicle",
        EVENTS as i64,
        Duration::from_secs(600),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(counts.done, EVENTS as i64);
    elapsed.as_secs_f64() * 1e6 / EVENTS as f64
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn python_vs_rust_cost_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let rust = plugin("chronicle_entries");
    let python = componentize_py(
        "sql-plugin",
        &repo_root().join("examples/python/chronicle_entries"),
        "app",
        &dir.path().join("chronicle_entries_py.wasm"),
    );
    let mut rows = Vec::new();
    let noop = plugin("noop");
    let floor = tokio::task::block_in_place(|| plugin_only(&noop, dir.path()));
    rows.push(format!(
        "noop    (harness floor)  plugin only {floor:>8.1} µs/event"
    ));
    for (name, component) in [("rust", &rust), ("python", &python)] {
        let size = std::fs::metadata(component).unwrap().len();
        let only = tokio::task::block_in_place(|| plugin_only(component, dir.path()));
        let e2e = end_to_end(component, dir.path()).await;
        rows.push(format!(
            "{name:<7} {:>9} KB  plugin only {only:>8.1} µs/event  end to end {e2e:>8.1} µs/event",
            size / 1024
        ));
    }
    println!("chronicle projection, {EVENTS} events, one event per handle() call:");
    for row in rows {
        println!("  {row}");
    }
}
