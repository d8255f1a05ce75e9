//! Operator transitions: an audited replay (dry runs change nothing) that lets failed events
//! succeed after a fix, a skip that unblocks an aggregate, and pause/resume of a projection.

mod common;

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
