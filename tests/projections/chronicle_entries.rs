//! The chronicle projection (seed 004): `chronicle_events`, the application's source of truth,
//! projected into `chronicle_entries` through the `sql` capability. The read model equals the
//! source rows, a broken action context fails alone, and replays change nothing. The same check
//! runs on the Rust plugin (`plugins/chronicle-entries`) and on its Python port
//! (`examples/python/chronicle_entries`, built here with componentize-py).

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn entries_equal_the_source_of_truth_and_replays_change_nothing() {
    check_chronicle_projection(&plugin("chronicle_entries")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_port_passes_the_same_check() {
    let out = tempfile::tempdir().unwrap();
    let component = componentize_py(
        "sql-plugin",
        &repo_root().join("examples/python/chronicle_entries"),
        "app",
        &out.path().join("chronicle_entries_py.wasm"),
    );
    check_chronicle_projection(&component).await;
}

/// Runs `component` as the `chronicle` projection over 200 application changes and two broken
/// ones, then replays everything; the read model must equal `chronicle_events` throughout.
async fn check_chronicle_projection(component: &std::path::Path) {
    let db = TestDb::new().await;
    db.migrate();
    create_chronicle_tables(&db.pool).await;
    sqlx::raw_sql(&chronicle_writes(1, 200, 20))
        .execute(&db.pool)
        .await
        .unwrap();
    // Two events whose action context is broken: no actor, no entity.
    let broken = insert_events(
        &db.pool,
        &[
            NewEvent::new("chronicle", "book:orphan-1", serde_json::json!({
                "chronicleEventId": "00000000-0000-4000-8000-000000000001", "entityType": "book",
                "entityId": "orphan-1", "eventType": "BookRenamed", "occurredAt": "2025-11-08T10:00:00Z"})),
            NewEvent::new("chronicle", "book:orphan-2", serde_json::json!({
                "chronicleEventId": "00000000-0000-4000-8000-000000000002", "actorUserId": "user-1",
                "eventType": "BookRenamed", "occurredAt": "2025-11-08T10:00:00Z"})),
        ],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "chronicle.toml",
        format!(
            "[[projection]]\nname = \"chronicle\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"chronicle_entries\"]\n",
            component.display()
        ),
    );
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    // A Python component (18 MB) takes the host seconds of CPU to compile, minutes on a busy
    // 2-core machine; readiness waits for it (a host that exits fails at once).
    host.wait_ready(secs(300));
    let counts = wait_settled(&db.pool, "chronicle", 202, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (200, 2));
    for row in common::events(&db.pool, "chronicle").await {
        if broken.contains(&row.id) {
            assert_eq!(row.error_reason.as_deref(), Some("bad_payload"));
            assert_eq!(row.failure_kind.as_deref(), Some("deterministic"));
        }
    }

    let source = chronicle_rows(&db.pool, CHRONICLE_FOLD).await;
    let entries = chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await;
    assert_eq!(entries.len(), 200);
    assert_eq!(
        entries, source,
        "the read model equals the source of truth, row for row"
    );

    // Replay everything: the upsert keyed by the chronicle event id changes nothing.
    sqlx::query("UPDATE outbox_events SET status = 'pending', attempts = 0, next_retry_at = now() WHERE status = 'done'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until("the replayed events are done again", PATIENCE, async || {
        status_counts(&db.pool, "chronicle").await.done == 200
    })
    .await;
    let again = chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await;
    assert_eq!(again, source);
    assert!(
        host.metric(
            "outbox_dispatch_success_total",
            &[("projection", "chronicle")]
        )
        .unwrap_or(0.0)
            >= 400.0
    );
}
