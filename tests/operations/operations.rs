//! Operator transitions: an audited replay (dry runs change nothing) that lets failed events
//! succeed after a fix, a skip that unblocks an aggregate, and pause/resume of a projection.

use crate::common;

use common::*;
use serde_json::{json, Value};

fn projector_json(args: &[&str], db: &TestDb) -> Value {
    let out = run_projector(args, &[("DATABASE_URL", db.url.as_str())]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A config for projection `p` running `scripted`, with `outcome = <outcome>` in its config map
/// (none: the `from_config` events fail with `bad_config`).
fn config(dir: &std::path::Path, outcome: Option<&str>) -> std::path::PathBuf {
    let map = outcome
        .map(|o| format!("[projection.config]\noutcome = \"{o}\"\n"))
        .unwrap_or_default();
    write_file(
        dir,
        format!("{}.toml", outcome.unwrap_or("missing")),
        format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\n{map}",
            plugin("scripted").display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_changes_nothing_and_a_replay_after_the_fix_lets_the_failed_events_succeed() {
    let db = TestDb::new().await;
    db.migrate();
    let mut events: Vec<NewEvent> = (0..6)
        .map(|i| NewEvent::new("p", format!("agg-{i}"), json!({"outcome": "from_config"})))
        .collect();
    events.push(NewEvent::new(
        "p",
        "other",
        json!({"outcome": "deterministic", "reason": "bad_payload"}),
    ));
    insert_events(&db.pool, &events).await;
    let dir = tempfile::tempdir().unwrap();
    // The projection is misconfigured: the events fail with `bad_config`.
    let broken = config(dir.path(), None);
    {
        let mut host = Host::start(&db.url, &["--config", broken.to_str().unwrap()], &[]);
        host.wait_ready(PATIENCE);
        assert_eq!(wait_settled(&db.pool, "p", 7, PATIENCE).await.failed, 7);
        host.sigterm();
        host.wait_exit(secs(30));
    }
    let before = common::events(&db.pool, "p").await;

    let dry = projector_json(
        &[
            "replay",
            "--projection",
            "p",
            "--by",
            "ops",
            "--reason",
            "config fixed",
            "--error-reason",
            "bad_payload",
            "--dry-run",
        ],
        &db,
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["event_ids"].as_array().unwrap().len(), 1);
    let after_dry = common::events(&db.pool, "p").await;
    assert_eq!(
        after_dry
            .iter()
            .map(|r| (&r.status, r.attempts))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|r| (&r.status, r.attempts))
            .collect::<Vec<_>>(),
        "a dry run changes nothing"
    );

    // Fix the config, replay only the `bad_config` failures (the bad payload stays failed).
    let fixed = config(dir.path(), Some("success"));
    let replayed = projector_json(
        &[
            "replay",
            "--projection",
            "p",
            "--by",
            "ops",
            "--reason",
            "config fixed",
            "--error-reason",
            "bad_config",
        ],
        &db,
    );
    assert_eq!(replayed["event_ids"].as_array().unwrap().len(), 6);
    let rows = common::events(&db.pool, "p").await;
    let replayed_rows: Vec<_> = rows.iter().filter(|r| r.status == "pending").collect();
    assert_eq!(replayed_rows.len(), 6);
    assert!(replayed_rows.iter().all(|r| r.attempts == 0));
    let audit: Vec<(String, bool, i32, String, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT a.action, a.dry_run, a.row_count, a.performed_by, a.reason, e.replay_count, e.last_replayed_by
         FROM replay_audit a LEFT JOIN outbox_events e ON e.id = a.event_ids[1] ORDER BY a.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1, audit[0].2),
        ("replay", true, 1)
    );
    assert_eq!(
        (audit[1].0.as_str(), audit[1].1, audit[1].2),
        ("replay", false, 6)
    );
    assert_eq!(
        (audit[1].3.as_str(), audit[1].4.as_str(), audit[1].5),
        ("ops", "config fixed", 1)
    );
    assert_eq!(audit[1].6.as_deref(), Some("ops"));

    let mut host = Host::start(&db.url, &["--config", fixed.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "p", 7, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (6, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn skipping_a_failed_event_unblocks_its_aggregate_in_order() {
    let db = TestDb::new().await;
    db.migrate();
    let ids = insert_events(
        &db.pool,
        &[
            NewEvent::new(
                "p",
                "X",
                json!({"outcome": "deterministic", "reason": "bad_payload"}),
            ),
            NewEvent::new("p", "X", json!({"outcome": "success"})),
            NewEvent::new("p", "X", json!({"outcome": "success"})),
        ],
    )
    .await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[],
    );
    host.wait_ready(PATIENCE);
    wait_until(
        "the first event fails and blocks the rest",
        PATIENCE,
        async || status_counts(&db.pool, "p").await.failed == 1,
    )
    .await;
    wait_until("the blocked events are counted", PATIENCE, async || {
        host.metric("outbox_blocked_events", &[("projection", "p")]) == Some(2.0)
    })
    .await;
    let first = ids[0].to_string();
    let skipped = projector_json(
        &[
            "skip",
            "--projection",
            "p",
            "--ids",
            &first,
            "--by",
            "ops",
            "--reason",
            "known bad",
        ],
        &db,
    );
    assert_eq!(skipped["action"], "skip");
    wait_until("the aggregate continues", PATIENCE, async || {
        status_counts(&db.pool, "p").await.done == 2
    })
    .await;
    let rows = common::events(&db.pool, "p").await;
    assert_eq!(rows[0].status, "skipped");
    assert!(rows[1].done_at < rows[2].done_at, "in seq order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_projection_claims_nothing_while_others_drain_and_resumes_where_it_was() {
    let db = TestDb::new().await;
    db.migrate();
    let out = run_projector(
        &["pause", "--projection", "p", "--reason", "maintenance"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let mut events: Vec<NewEvent> = (0..20)
        .map(|i| NewEvent::new("p", format!("a{i}"), json!({"outcome": "success"})))
        .collect();
    events.extend(
        (0..20).map(|i| NewEvent::new("q", format!("b{i}"), json!({"outcome": "success"}))),
    );
    insert_events(&db.pool, &events).await;
    let scripted = plugin("scripted");
    let mut host = Host::start(
        &db.url,
        &[
            "--plugin",
            &plugin_spec("p", &scripted),
            "--plugin",
            &plugin_spec("q", &scripted),
        ],
        &[],
    );
    host.wait_ready(PATIENCE);
    assert_eq!(
        wait_settled(&db.pool, "q", 20, PATIENCE).await.done,
        20,
        "other projections are unaffected"
    );
    tokio::time::sleep(secs(1)).await;
    assert_eq!(
        status_counts(&db.pool, "p").await.pending,
        20,
        "paused: nothing claimed"
    );
    wait_until(
        "the paused projection's lag shows in metrics",
        PATIENCE,
        async || host.metric("outbox_lag_events", &[("projection", "p")]) == Some(20.0),
    )
    .await;

    let out = run_projector(
        &["resume", "--projection", "p"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(wait_settled(&db.pool, "p", 20, PATIENCE).await.done, 20);
}

/// Every state at once, set up directly in SQL: pending, processing under a live lease, stuck
/// (expired lease), done, failed with two reasons, skipped, pending blocked behind a failure,
/// a paused projection and an active plugin version.
async fn seed_every_state(pool: &sqlx::PgPool) {
    let mut events = Vec::new();
    for (agg, n) in [
        ("a1", 3),
        ("a2", 1),
        ("a3", 2),
        ("a4", 1),
        ("a5", 1),
        ("a6", 2),
        ("a7", 1),
        ("a8", 2),
    ] {
        for _ in 0..n {
            events.push(NewEvent::new("p", agg, json!({"outcome": "success"})));
        }
    }
    events.extend((0..3).map(|i| NewEvent::new("q", format!("q{i}"), json!({}))));
    insert_events(pool, &events).await;
    let first_of =
        "(SELECT min(seq) FROM outbox_events WHERE projection = 'p' AND aggregate_id = $1)";
    for (agg, set) in [
        (
            "a1",
            "status = 'failed', error_reason = 'bad_payload', attempts = 1",
        ),
        (
            "a2",
            "status = 'failed', error_reason = 'es_rejected', attempts = 1",
        ),
        (
            "a4",
            "status = 'processing', lease_expires_at = now() + interval '1 hour', attempts = 1",
        ),
        (
            "a5",
            "status = 'processing', lease_expires_at = now() - interval '1 minute', attempts = 1",
        ),
        ("a6", "status = 'skipped'"),
        (
            "a7",
            "status = 'failed', error_reason = 'bad_payload', attempts = 1",
        ),
    ] {
        sqlx::query(&format!(
            "UPDATE outbox_events SET {set} WHERE seq = {first_of}"
        ))
        .bind(agg)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "UPDATE outbox_events SET status = 'done', done_at = now() WHERE aggregate_id = 'a3'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox_events SET created_at = now() - interval '90 seconds' WHERE aggregate_id = 'a8'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO plugin_versions (projection, digest, version_label, status, activated_at, activated_by)
         VALUES ('p', 'd1', 'scripted@1.0.0#d1', 'active', now(), 'ops')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO projection_pauses (projection, paused_by, reason) VALUES ('q', 'ops', 'maintenance')")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_numbers_equal_direct_sql_counts_with_every_state_present() {
    let db = TestDb::new().await;
    db.migrate();
    seed_every_state(&db.pool).await;
    let report = projector_json(&["status", "--json"], &db);
    let rows = report.as_array().expect("a list of projections");
    assert_eq!(rows.len(), 2, "{report}");
    for row in rows {
        let name = row["projection"].as_str().unwrap();
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM outbox_events WHERE projection = $1 GROUP BY status",
        )
        .bind(name)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        for status in ["pending", "processing", "done", "failed", "skipped"] {
            let expected = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            assert_eq!(row["counts"][status], expected, "{name} {status}: {row}");
        }
        let (stuck, blocked, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT
               (SELECT count(*) FROM outbox_events WHERE projection = $1 AND status = 'processing' AND lease_expires_at < now()),
               (SELECT count(*) FROM outbox_events o WHERE o.projection = $1 AND o.status = 'pending'
                  AND EXISTS (SELECT 1 FROM outbox_events f WHERE f.projection = o.projection
                              AND f.aggregate_id = o.aggregate_id AND f.seq < o.seq AND f.status = 'failed')),
               (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox_events
                WHERE projection = $1 AND status = 'pending')",
        )
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(row["stuck"], stuck, "{name}: {row}");
        assert_eq!(row["blocked"], blocked, "{name}: {row}");
        let age = row["oldest_pending_age_seconds"].as_f64().unwrap();
        assert!(
            (age - oldest.unwrap()).abs() < 5.0,
            "{name}: {age} vs {oldest:?}"
        );
        let by_reason: Vec<(String, i64)> = sqlx::query_as(
            "SELECT error_reason, count(*) FROM outbox_events WHERE projection = $1 AND status = 'failed' GROUP BY 1",
        )
        .bind(name)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            row["failed_by_reason"].as_object().unwrap().len(),
            by_reason.len(),
            "{name}: {row}"
        );
        for (reason, n) in by_reason {
            assert_eq!(
                row["failed_by_reason"][&reason], n,
                "{name} {reason}: {row}"
            );
        }
    }
    // The scenario really has every state, and the table shows the same.
    let p = &rows[0];
    assert_eq!(p["projection"], "p");
    assert_eq!(
        (p["stuck"].as_i64(), p["blocked"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(p["failed_by_reason"]["bad_payload"], 2);
    assert!(
        p["oldest_pending_age_seconds"].as_f64().unwrap() >= 89.0,
        "{p}"
    );
    assert_eq!(p["plugin"]["version"], "scripted@1.0.0#d1");
    assert!(p["paused"].is_null());
    assert_eq!(rows[1]["paused"]["paused_by"], "ops");
    let out = run_projector(&["status"], &[("DATABASE_URL", db.url.as_str())]);
    assert!(out.status.success(), "{}", output_text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with("p ")).expect(&table);
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cells[..8],
        ["p", "5", "2", "2", "3", "1", "1", "2"],
        "{table}"
    );
    assert!(
        table.contains("failed in p: bad_payload=2, es_rejected=1"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_only_old_done_rows_and_background_retention_does_it_while_claims_go_on() {
    let db = TestDb::new().await;
    db.migrate();
    seed_every_state(&db.pool).await;
    // Old done rows: the two of a3, done two hours ago; one recent done row of a8.
    sqlx::query(
        "UPDATE outbox_events SET done_at = now() - interval '2 hours' WHERE aggregate_id = 'a3'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE outbox_events SET status = 'done', done_at = now()
         WHERE seq = (SELECT min(seq) FROM outbox_events WHERE aggregate_id = 'a8')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, status FROM outbox_events ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let pruned = projector_json(&["prune", "--older-than", "3600", "--batch-size", "1"], &db);
    assert_eq!(pruned["deleted"], 2, "{pruned}");
    assert_eq!(pruned["by_projection"]["p"], 2, "{pruned}");
    let after: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, status FROM outbox_events ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let a3: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM outbox_events WHERE aggregate_id = 'a3'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(a3.is_empty(), "the old done rows are gone");
    assert_eq!(after.len(), before.len() - 2, "nothing else is deleted");
    assert!(
        after.iter().any(|(_, s)| s == "done"),
        "the recent done row stays"
    );

    let bad = run_projector(
        &["prune", "--older-than", "0"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    assert!(
        output_text(&bad).contains("older-than"),
        "{}",
        output_text(&bad)
    );

    // In the background: a host with retention of 1 s keeps claiming new events while it
    // deletes the done ones.
    let fresh: Vec<NewEvent> = (0..300)
        .map(|i| NewEvent::new("r", format!("r{}", i % 30), json!({"outcome": "success"})))
        .collect();
    insert_events(&db.pool, &fresh).await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("r", &plugin("scripted"))],
        &[
            ("OUTBOX_RETENTION_DONE_SECONDS", "1"),
            ("OUTBOX_RETENTION_INTERVAL_SECONDS", "0.3"),
            ("OUTBOX_RETENTION_BATCH_SIZE", "50"),
        ],
    );
    host.wait_ready(PATIENCE);
    let more: Vec<NewEvent> = (0..300)
        .map(|i| NewEvent::new("r", format!("r{}", i % 30), json!({"outcome": "success"})))
        .collect();
    insert_events(&db.pool, &more).await;
    wait_until(
        "every r event is processed and pruned",
        PATIENCE,
        async || {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE projection = 'r'")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            left == 0
        },
    )
    .await;
    let pruned = host.metric("outbox_pruned_total", &[("projection", "r")]);
    assert_eq!(
        pruned,
        Some(600.0),
        "every r event was done before it was pruned"
    );
    assert_eq!(
        host.metric("outbox_dispatch_success_total", &[("projection", "r")]),
        Some(600.0)
    );
    // Rows that are not done are kept, whatever their age.
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE projection IN ('p', 'q') AND status <> 'done'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, (before.len() - 2 - 1) as i64);
}
