//! The `sql` capability: a projection's statements run as its own database role inside the
//! transaction that records the batch's outcomes. Postgres refuses whatever the grants do not
//! allow, however the statement is written; an event that does not succeed leaves no write
//! behind; and a host that dies before committing leaves neither writes nor `done` marks.

use crate::common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn statements_outside_the_grant_are_refused_by_postgres_however_they_are_written() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let attempts: Vec<(&str, Value)> = vec![
        (
            "direct read",
            statements(&[("SELECT * FROM secret", json!([]))]),
        ),
        (
            "subquery",
            statements(&[("INSERT INTO allowed SELECT id, note FROM secret", json!([]))]),
        ),
        (
            "cte",
            statements(&[(
                "WITH gone AS (DELETE FROM secret RETURNING id) SELECT count(*) FROM gone",
                json!([]),
            )]),
        ),
        ("drop", statements(&[("DROP TABLE allowed", json!([]))])),
        (
            "drop secret",
            statements(&[("DROP TABLE secret", json!([]))]),
        ),
        (
            "function call",
            statements(&[("SELECT wipe_secret()", json!([]))]),
        ),
        ("truncate", statements(&[("TRUNCATE secret", json!([]))])),
        (
            "reset role first",
            statements(&[("RESET ROLE", json!([])), ("DELETE FROM secret", json!([]))]),
        ),
        (
            "set_config role",
            statements(&[("SELECT set_config('role', 'postgres', false)", json!([]))]),
        ),
        (
            "outbox tampering",
            statements(&[("UPDATE outbox_events SET status = 'done'", json!([]))]),
        ),
        (
            "credentials",
            statements(&[("SELECT * FROM projector_sql_roles", json!([]))]),
        ),
    ];
    let events: Vec<NewEvent> = attempts
        .iter()
        .enumerate()
        .map(|(i, (_, payload))| NewEvent::new("probe", format!("agg-{i}"), payload.clone()))
        .collect();
    let ids = insert_events(&db.pool, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", probe_config(dir.path(), "").to_str().unwrap()],
        &[],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, "probe", attempts.len() as i64, PATIENCE).await;

    let rows = common::events(&db.pool, "probe").await;
    for ((what, _), id) in attempts.iter().zip(&ids) {
        let row = rows.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(row.status, "failed", "{what}: {row:?}");
        let reason = row.error_reason.as_deref().unwrap_or("");
        // DDL, TRUNCATE, RESET ROLE and set_config are not statements a plugin may send at all
        // (the host refuses them before Postgres sees them, see hostile_sql.rs); everything
        // else is refused by Postgres for want of privileges.
        let refused_by_host = [
            "drop",
            "drop secret",
            "truncate",
            "reset role first",
            "set_config role",
        ];
        let expected = if refused_by_host.contains(what) {
            "sql_forbidden_statement"
        } else {
            "sql_permission_denied"
        };
        assert_eq!(reason, expected, "{what}: {:?}", row.error);
    }
    assert_eq!(secret_rows(&db).await, vec![(1, "keep me".to_owned())]);
    assert_eq!(allowed_ids(&db).await, Vec::<i32>::new());
    let tables = db.public_tables().await;
    assert!(tables.contains(&"allowed".to_owned()) && tables.contains(&"secret".to_owned()));
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_successful_events_keep_their_writes_and_they_commit_with_the_done_marks() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let insert = "INSERT INTO allowed (id, note) VALUES ($1, $2)";
    let events = vec![
        NewEvent::new("probe", "a", statements(&[(insert, json!([1, "kept"]))])),
        NewEvent::new("probe", "b", {
            let mut p = statements(&[(insert, json!([2, "rolled back"]))]);
            p["outcome"] = json!("deterministic");
            p
        }),
        // A statement fails (duplicate key): the event fails, its first write goes too.
        NewEvent::new(
            "probe",
            "c",
            statements(&[(insert, json!([3, "first"])), (insert, json!([1, "dup"]))]),
        ),
        NewEvent::new("probe", "d", statements(&[(insert, json!([4, "kept"]))])),
    ];
    insert_events(&db.pool, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", probe_config(dir.path(), "").to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "10"), ("OUTBOX_CONCURRENCY", "1")],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, "probe", 4, PATIENCE).await;
    let rows = common::events(&db.pool, "probe").await;
    let by_agg = |a: &str| rows.iter().find(|r| r.aggregate_id == a).unwrap().clone();
    assert_eq!(by_agg("a").status, "done");
    assert_eq!(by_agg("d").status, "done");
    assert_eq!(
        by_agg("b").error_reason.as_deref(),
        Some("scripted_deterministic")
    );
    assert_eq!(
        by_agg("c").error_reason.as_deref(),
        Some("sql_unique_violation")
    );
    assert_eq!(
        by_agg("a").claim_batch_id,
        by_agg("d").claim_batch_id,
        "one batch"
    );
    assert_eq!(allowed_ids(&db).await, vec![1, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_after_the_plugin_wrote_leaves_no_write_and_no_done_mark() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    // The plugin writes, then (on its first attempt only) takes 20 s to answer.
    let mut payload = statements(&[(
        "INSERT INTO allowed (id, note) VALUES ($1, $2)",
        json!([7, "once"]),
    )]);
    payload["sleep_ms"] = json!(20_000);
    payload["sleep_on_attempt"] = json!(1);
    insert_events(&db.pool, &[NewEvent::new("probe", "x", payload)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = probe_config(dir.path(), "");
    let env = [
        ("OUTBOX_LEASE_SECONDS", "2"),
        ("OUTBOX_MAX_PROCESSING_SECONDS", "60"),
    ];
    let mut a = Host::start(&db.url, &["--config", config.to_str().unwrap()], &env);
    a.wait_ready(PATIENCE);
    wait_until(
        "the plugin has written and is sleeping",
        PATIENCE,
        async || a.log_text().contains("sleeping 20000 ms"),
    )
    .await;
    // The write is in the open transaction: invisible outside it.
    assert_eq!(allowed_ids(&db).await, Vec::<i32>::new());
    a.sigkill();
    a.wait_exit(secs(10));
    let row = &common::events(&db.pool, "probe").await[0];
    assert_eq!(row.status, "processing", "no done mark without the write");
    assert_eq!(
        allowed_ids(&db).await,
        Vec::<i32>::new(),
        "no write without the done mark"
    );

    // Another host reclaims it after the lease and applies it exactly once.
    let mut b = Host::start(&db.url, &["--config", config.to_str().unwrap()], &env);
    b.wait_ready(PATIENCE);
    wait_settled(&db.pool, "probe", 1, PATIENCE).await;
    let row = &common::events(&db.pool, "probe").await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("done", 2));
    assert_eq!(allowed_ids(&db).await, vec![7]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_importing_sql_without_the_grant_is_refused_at_load() {
    let db = TestDb::new().await;
    let out = run_projector(
        &[
            "run",
            "--plugin",
            &plugin_spec("nosql", &plugin("sql_probe")),
        ],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("`sql`") && text.contains("`nosql`"), "{text}");
    assert!(db.public_tables().await.is_empty(), "nothing touched");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_loops_of_one_host_each_keep_their_own_transaction() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let slow = |id: i32| {
        let mut p = statements(&[(
            "INSERT INTO allowed (id, note) VALUES ($1, 'slow')",
            json!([id]),
        )]);
        p["sleep_ms"] = json!(1500);
        p
    };
    let events: Vec<NewEvent> = (1..=4)
        .map(|i| NewEvent::new("probe", format!("agg-{i}"), slow(i)))
        .collect();
    insert_events(&db.pool, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", probe_config(dir.path(), "").to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "1"), ("OUTBOX_CONCURRENCY", "4")],
    );
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "probe", 4, PATIENCE).await;
    assert_eq!(
        counts.done,
        4,
        "{:?}",
        common::events(&db.pool, "probe").await
    );
    assert_eq!(allowed_ids(&db).await, vec![1, 2, 3, 4]);
    let rows = common::events(&db.pool, "probe").await;
    let batches: std::collections::HashSet<_> = rows.iter().map(|r| r.claim_batch_id).collect();
    assert_eq!(batches.len(), 4, "one batch per event");
    // The loops ran at the same time: every batch was claimed before any was settled (each
    // takes 1.5 s inside the plugin) ...
    let last_claim = rows
        .iter()
        .filter_map(|r| r.processing_started_at)
        .max()
        .unwrap();
    let first_done = rows.iter().filter_map(|r| r.done_at).min().unwrap();
    assert!(
        last_claim < first_done,
        "the batches did not overlap: last claimed at {last_claim}, first settled at {first_done}"
    );
    // ... and each write committed in a transaction of its own (four distinct xmin).
    let xids: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT xmin::text FROM allowed")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(xids.len(), 4, "{xids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_statement_text_bound_with_different_json_types_keeps_each_calls_values() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let insert = "INSERT INTO allowed (id, note) VALUES ($1::int, $2::text)";
    let payload = statements(&[
        (insert, json!([1, 42])),
        (insert, json!([2, "abcdefgh"])),
        (insert, json!([3, null])),
    ]);
    insert_events(&db.pool, &[NewEvent::new("probe", "a", payload)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", probe_config(dir.path(), "").to_str().unwrap()],
        &[],
    );
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "probe", 1, PATIENCE).await;
    assert_eq!(
        counts.done,
        1,
        "{:?}",
        common::events(&db.pool, "probe").await
    );
    let notes: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT id, note FROM allowed ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        notes,
        vec![
            (1, Some("42".to_owned())),
            (2, Some("abcdefgh".to_owned())),
            (3, None)
        ]
    );
}
