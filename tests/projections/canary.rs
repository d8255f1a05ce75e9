//! Canary rollouts while an application keeps writing: a new version runs for a stable share of
//! aggregates (the 64-bit FNV-1a hash of the aggregate id mod 100 below the share), the active
//! version keeps the others, and the host compares their failure rates once the canary has
//! handled `OUTBOX_CANARY_MIN_EVENTS` outcomes. A good version is promoted; a version failing
//! 30 % of its events is rolled back, its failures confined to the canary's aggregates and
//! replayable. Every event is applied once (the `stamps` sink counts a second application), by
//! the version its outbox row names, in order per aggregate.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";
const SHARE: u64 = 30;

/// The documented side rule, written here from the docs (not imported from the host).
fn canary_side(aggregate_id: &str) -> bool {
    let hash = aggregate_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash % 100 < SHARE
}

/// The projection's one canary row, as the admin API lists it.
fn canary_row(host: &Host) -> Value {
    let (status, body) = host.send("GET", "/projections/stamp/plugins", None, b"");
    assert_eq!(status, 200, "{body}");
    body["canaries"][0].clone()
}

async fn wait_decided(host: &Host) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let row = canary_row(host);
        if row["state"] != "running" && !row.is_null() {
            return row;
        }
        assert!(Instant::now() < deadline, "canary not decided: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rate(n: &Value, of: &Value) -> f64 {
    let of = of.as_f64().unwrap();
    if of == 0.0 {
        0.0
    } else {
        100.0 * n.as_f64().unwrap() / of
    }
}

/// Prints the canary's measured figures (`--nocapture`): outcomes per version, both failure
/// rates, the decision and its reason.
fn report(label: &str, row: &Value) {
    println!(
        "CANARY {label}: {} {}% of aggregates; canary {} outcomes {} (transient {:.1}%, terminal {:.1}%); \
         active {} outcomes {} (transient {:.1}%, terminal {:.1}%); decision {} by {}: {}",
        row["canary_version"].as_str().unwrap_or("-"),
        row["share_percent"],
        row["canary_version"].as_str().unwrap_or("-"),
        row["canary_events"],
        rate(&row["canary_transient"], &row["canary_events"]),
        rate(&row["canary_terminal"], &row["canary_events"]),
        row["baseline_version"].as_str().unwrap_or("-"),
        row["baseline_events"],
        rate(&row["baseline_transient"], &row["baseline_events"]),
        rate(&row["baseline_terminal"], &row["baseline_events"]),
        row["state"],
        row["decided_by"],
        row["reason"].as_str().unwrap_or("-"),
    );
}

/// One outbox row with what the sink recorded for it.
#[derive(Debug, sqlx::FromRow)]
struct Delivered {
    id: uuid::Uuid,
    aggregate_id: String,
    status: String,
    attempts: i32,
    projection_version: Option<String>,
    error_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    done_at: Option<chrono::DateTime<chrono::Utc>>,
    stamped: Option<String>,
}

async fn delivered(pool: &sqlx::PgPool) -> Vec<Delivered> {
    sqlx::query_as(
        "SELECT e.id, e.aggregate_id, e.status, e.attempts, e.projection_version,
                e.error_reason, e.created_at, e.done_at, s.version AS stamped
         FROM outbox_events e LEFT JOIN stamps s ON s.event_id = e.id ORDER BY e.seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn by_version(rows: &[Delivered]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rows {
        let v = r.stamped.clone().unwrap_or_else(|| "(none)".into());
        *out.entry(v).or_insert(0) += 1;
    }
    out
}

fn at(row: &Value, key: &str) -> chrono::DateTime<chrono::Utc> {
    row[key].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_version_run_as_a_canary_for_30_percent_of_aggregates_is_promoted() {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let host = {
        let mut h = Host::start(
            &db.url,
            &["--config", config.to_str().unwrap()],
            &[
                ("OUTBOX_ADMIN_TOKEN", TOKEN),
                ("OUTBOX_BATCH_SIZE", "10"),
                ("OUTBOX_CANARY_MIN_EVENTS", "150"),
            ],
        );
        h.wait_ready(PATIENCE);
        h
    };
    let writer = keep_writing(db.pool.clone(), 200, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The CLI starts the canary through the admin API.
    let admin_url = format!("http://127.0.0.1:{}", host.port);
    let v2 = plugin("stamp_v2");
    let out = run_projector(
        &[
            "versions",
            "load",
            "--projection",
            "stamp",
            "--canary",
            "30%",
            "--admin-url",
            &admin_url,
            v2.to_str().unwrap(),
        ],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["status"], "canary", "{started}");
    // A second canary is refused while one runs.
    let (status, body) = host.send(
        "PUT",
        "/projections/stamp/plugin?canary=10",
        Some(TOKEN),
        &std::fs::read(plugin("stamp_flaky")).unwrap(),
    );
    assert_eq!(status, 409, "{body}");

    let row = wait_decided(&host).await;
    let written = writer.await.unwrap();
    let counts = wait_settled(&db.pool, "stamp", written as i64, PATIENCE).await;
    assert_eq!(counts.done, written as i64, "{counts:?}");
    report("good v2", &row);
    assert_eq!(row["state"], "promoted", "{row}");
    assert!(
        row["decided_by"].as_str().unwrap().starts_with("auto:"),
        "{row}"
    );
    assert!(
        row["reason"].as_str().unwrap().starts_with("no worse"),
        "{row}"
    );
    assert!(row["canary_events"].as_i64().unwrap() >= 150, "{row}");
    assert!(row["baseline_events"].as_i64().unwrap() > 0, "{row}");

    let (started_at, decided_at) = (at(&row, "started_at"), at(&row, "decided_at"));
    let grace = chrono::Duration::seconds(1);
    let rows = delivered(&db.pool).await;
    let mut canary_before = 0;
    for r in &rows {
        let stamped = r
            .stamped
            .as_deref()
            .unwrap_or_else(|| panic!("{r:?} not stamped"));
        assert_eq!(r.attempts, 1, "{r:?} delivered more than once");
        assert!(
            r.projection_version
                .as_deref()
                .unwrap()
                .starts_with(&format!("stamp@{stamped}+")),
            "{r:?}: the row names another version than the sink"
        );
        let done_at = r.done_at.unwrap();
        if done_at < decided_at && stamped == "2.0.0" {
            assert!(
                canary_side(&r.aggregate_id),
                "{r:?}: v2 outside the canary's share"
            );
            canary_before += 1;
        }
        if canary_side(&r.aggregate_id) && r.created_at > started_at + grace && done_at < decided_at
        {
            assert_eq!(stamped, "2.0.0", "{r:?}: the canary's share ran v1");
        }
        if r.created_at > decided_at + grace {
            assert_eq!(stamped, "2.0.0", "{r:?}: v1 after the promotion");
        }
    }
    assert!(canary_before > 0);
    // Ordering per aggregate held across the split: each aggregate's events completed in seq order.
    let mut last: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for r in &rows {
        let done_at = r.done_at.unwrap();
        if let Some(previous) = last.insert(&r.aggregate_id, done_at) {
            assert!(
                previous <= done_at,
                "{r:?} completed before an earlier event of its aggregate"
            );
        }
    }
    assert_eq!(stamp_duplicates(&db.pool).await, 0, "second applications");
    println!(
        "CANARY good v2: events {written}, by version {:?}, done by v2 before the promotion {canary_before}",
        by_version(&rows)
    );

    // Status, the version list and the metrics say what happened.
    let (_, status) = host.send("GET", "/projections/stamp/status", None, b"");
    assert_eq!(status["plugin"]["source"], "promote", "{status}");
    assert_eq!(status["canary"]["state"], "promoted", "{status}");
    let v1_outcomes = host.metric_sum(
        "projector_version_outcomes_total",
        &[("projection", "stamp")],
    ) - host_version_outcomes(&host, "stamp@2.0.0");
    assert!(v1_outcomes > 0.0 && host_version_outcomes(&host, "stamp@2.0.0") > 0.0);
    let out = run_projector(
        &["status", "--projection", "stamp"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("canary of stamp: promoted"), "{table}");
}

fn host_version_outcomes(host: &Host, prefix: &str) -> f64 {
    parse_metrics(&host.metrics())
        .into_iter()
        .filter(|s| s.name == "projector_version_outcomes_total")
        .filter(|s| {
            s.labels
                .get("version")
                .is_some_and(|v| v.starts_with(prefix))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_failing_30_percent_of_its_events_is_rolled_back_and_its_failures_are_replayed() {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let host = {
        let mut h = Host::start(
            &db.url,
            &["--config", config.to_str().unwrap()],
            &[
                ("OUTBOX_ADMIN_TOKEN", TOKEN),
                ("OUTBOX_BATCH_SIZE", "10"),
                ("OUTBOX_CANARY_MIN_EVENTS", "100"),
            ],
        );
        h.wait_ready(PATIENCE);
        h
    };
    let writer = keep_writing(db.pool.clone(), 400, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = host.send(
        "PUT",
        "/projections/stamp/plugin?canary=30%25",
        Some(TOKEN),
        &std::fs::read(plugin("stamp_flaky")).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["version"]
            .as_str()
            .unwrap()
            .starts_with("stamp@3.0.0+"),
        "{body}"
    );

    let row = wait_decided(&host).await;
    let written = writer.await.unwrap();
    report("flaky v3", &row);
    assert_eq!(row["state"], "rolled_back", "{row}");
    assert!(
        row["decided_by"].as_str().unwrap().starts_with("auto:"),
        "{row}"
    );
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("terminal failure rate worse"),
        "{reason}"
    );

    // Everything not blocked behind a failure settles; the failures wait for the operator.
    wait_until("the stream settles up to its failures", PATIENCE, async || {
        let (unfinished, blocked): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'processing')),
                    count(*) FILTER (WHERE status = 'pending' AND EXISTS (
                        SELECT 1 FROM outbox_events f WHERE f.projection = e.projection
                          AND f.aggregate_id = e.aggregate_id AND f.seq < e.seq AND f.status = 'failed'))
             FROM outbox_events e",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        unfinished == blocked
    })
    .await;
    let decided_at = at(&row, "decided_at");
    let rows = delivered(&db.pool).await;
    let failed: Vec<&Delivered> = rows.iter().filter(|r| r.status == "failed").collect();
    assert!(!failed.is_empty());
    for r in &rows {
        let on_v3 = r
            .projection_version
            .as_deref()
            .is_some_and(|v| v.starts_with("stamp@3.0.0+"));
        if on_v3 {
            assert!(
                canary_side(&r.aggregate_id),
                "{r:?}: v3 outside the canary's share"
            );
        }
        if r.status == "failed" {
            assert!(on_v3, "{r:?}: a failure not of the canary");
            assert_eq!(r.error_reason.as_deref(), Some("flaky_version"), "{r:?}");
        }
        if r.created_at > decided_at + chrono::Duration::seconds(1) && r.status == "done" {
            assert_eq!(
                r.stamped.as_deref(),
                Some("1.0.0"),
                "{r:?}: v3 after the rollback"
            );
        }
    }
    let blocked = rows.iter().filter(|r| r.status == "pending").count();
    println!(
        "CANARY flaky v3: events {written}; failed {} (all in canary aggregates), blocked behind them {blocked}; by version before the replay {:?}",
        failed.len(),
        by_version(&rows)
    );
    // The version list keeps why the canary was retired.
    let (_, listed) = host.send("GET", "/projections/stamp/plugins", None, b"");
    let v3 = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["declared_version"] == "3.0.0")
        .unwrap()
        .clone();
    assert_eq!(v3["status"], "retired", "{v3}");
    assert_eq!(v3["reason"].as_str(), Some(reason), "{v3}");
    let (_, status) = host.send("GET", "/projections/stamp/status", None, b"");
    assert_eq!(status["canary"]["state"], "rolled_back", "{status}");
    assert!(status["plugin"]["version"]
        .as_str()
        .unwrap()
        .starts_with("stamp@1.0.0+"));

    // The operator replays the canary's failures: v1 applies them, and their aggregates go on.
    let out = run_projector(
        &[
            "replay",
            "--projection",
            "stamp",
            "--by",
            "ops",
            "--reason",
            "canary 3.0.0 rolled back",
            "--error-reason",
            "flaky_version",
        ],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let counts = wait_settled(&db.pool, "stamp", written as i64, PATIENCE).await;
    assert_eq!(counts.done, written as i64, "{counts:?}");
    let after = delivered(&db.pool).await;
    for r in &after {
        let stamped = r.stamped.as_deref().unwrap_or_else(|| panic!("{r:?} lost"));
        if failed.iter().any(|f| f.id == r.id) {
            assert_eq!(stamped, "1.0.0", "{r:?}: the replay ran on v1");
        }
    }
    assert_eq!(stamp_duplicates(&db.pool).await, 0, "second applications");
    let stamps: i64 = sqlx::query_scalar("SELECT count(*) FROM stamps")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stamps, written as i64, "every event applied once");
    println!(
        "CANARY flaky v3: after the replay all {written} done, by version {:?}, duplicates 0",
        by_version(&after)
    );
    assert!(host_version_outcomes(&host, "stamp@3.0.0") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_is_followed_by_every_replica_survives_a_restart_and_is_aborted_or_promoted_by_hand(
) {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let start = || {
        let mut h = Host::start(
            &db.url,
            &["--config", config.to_str().unwrap()],
            &[
                ("OUTBOX_ADMIN_TOKEN", TOKEN),
                ("OUTBOX_BATCH_SIZE", "3"),
                // Never due on its own here: the operator decides.
                ("OUTBOX_CANARY_MIN_EVENTS", "1000000"),
            ],
        );
        h.wait_ready(PATIENCE);
        h
    };
    let a = start();
    let mut b = start();
    let admin_url = format!("http://127.0.0.1:{}", a.port);
    let cli = |args: &[&str]| {
        let mut all = vec!["versions"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--projection", "stamp", "--by", "ops"]);
        all.extend_from_slice(&["--admin-url", &admin_url]);
        let out = run_projector(&all, &[("OUTBOX_ADMIN_TOKEN", TOKEN)]);
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v2 = plugin("stamp_v2");
    cli(&["load", "--canary", "30%", v2.to_str().unwrap()]);
    wait_until("b follows the canary", PATIENCE, async || {
        b.log_text()
            .contains("following the canary another host started")
    })
    .await;

    // B restarts while the canary runs: it comes back running it.
    b.sigterm();
    b.wait_exit(secs(30));
    let b = start();
    assert!(b
        .log_text()
        .contains("following the canary another host started"));
    let write = async |from: usize| {
        let events: Vec<NewEvent> = (from..from + 120)
            .map(|i| NewEvent::new("stamp", format!("agg-{}", i % 60), json!({"n": i})))
            .collect();
        insert_events(&db.pool, &events).await;
        wait_settled(&db.pool, "stamp", (from + 120) as i64, PATIENCE).await;
    };
    write(0).await;
    let rows = delivered(&db.pool).await;
    for r in &rows {
        let expected = if canary_side(&r.aggregate_id) {
            "2.0.0"
        } else {
            "1.0.0"
        };
        assert_eq!(r.stamped.as_deref(), Some(expected), "{r:?}");
    }
    let (on_a, on_b) = (
        host_version_outcomes(&a, "stamp@2.0.0"),
        host_version_outcomes(&b, "stamp@2.0.0"),
    );
    println!(
        "CANARY by hand: during the canary {:?}; v2 outcomes on host a {on_a}, on host b {on_b}",
        by_version(&rows)
    );

    // Aborted by hand: every aggregate is back on v1, on both hosts.
    let aborted = cli(&["abort"]);
    assert!(
        aborted["version"]
            .as_str()
            .unwrap()
            .starts_with("stamp@1.0.0+"),
        "{aborted}"
    );
    let row = canary_row(&a);
    assert_eq!(row["state"], "aborted", "{row}");
    assert_eq!(row["reason"], "aborted by hand", "{row}");
    wait_until("b follows the abort", PATIENCE, async || {
        b.log_text().contains("following the end of the canary")
    })
    .await;
    write(120).await;
    let after_abort = delivered(&db.pool).await;
    assert!(after_abort[120..]
        .iter()
        .all(|r| r.stamped.as_deref() == Some("1.0.0")));

    // Tried again, then promoted by hand: v2 everywhere, its source `promote`.
    cli(&["load", "--canary", "30", v2.to_str().unwrap()]);
    let promoted = cli(&["promote"]);
    assert!(
        promoted["version"]
            .as_str()
            .unwrap()
            .starts_with("stamp@2.0.0+"),
        "{promoted}"
    );
    wait_until("b follows the promotion", PATIENCE, async || {
        b.log_text()
            .contains("following the version another host activated")
    })
    .await;
    write(240).await;
    let after_promote = delivered(&db.pool).await;
    assert!(after_promote[240..]
        .iter()
        .all(|r| r.stamped.as_deref() == Some("2.0.0")));
    let (_, status) = a.send("GET", "/projections/stamp/status", None, b"");
    assert_eq!(status["plugin"]["source"], "promote", "{status}");
    assert_eq!(status["canary"]["state"], "promoted", "{status}");
    assert_eq!(status["canary"]["decided_by"], "ops", "{status}");
    // Nothing left to promote.
    let out = run_projector(
        &[
            "versions",
            "promote",
            "--projection",
            "stamp",
            "--admin-url",
            &admin_url,
        ],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no running canary"),
        "{}",
        output_text(&out)
    );
    assert_eq!(stamp_duplicates(&db.pool).await, 0);
}
