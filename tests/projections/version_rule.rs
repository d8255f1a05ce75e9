//! Which plugin version runs, across restarts and replicas: the database's active version is the
//! truth. A version loaded over the admin API survives a restart of every replica even though
//! their configured file still names the old one, and each replica says so loudly; an operator
//! who wants the file to win says so (`OUTBOX_PLUGIN_FILE_POLICY=file`); a file the database has
//! never seen (a new deploy) is registered and runs. `status` names the active version and where
//! it came from.

use crate::common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

/// Two replicas of projection `stamp` with the v1 file configured, small batches so both work.
fn replica(db: &TestDb, config: &std::path::Path, env: &[(&str, &str)]) -> Host {
    let mut all = vec![("OUTBOX_ADMIN_TOKEN", TOKEN), ("OUTBOX_BATCH_SIZE", "3")];
    all.extend_from_slice(env);
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &all);
    host.wait_ready(PATIENCE);
    host
}

fn stop(host: &mut Host) {
    host.sigterm();
    host.wait_exit(secs(30));
}

/// Writes `n` events over 20 aggregates, waits until all are done, and returns how many each
/// version applied (from the `stamps` read model), checking each was applied once.
async fn write_and_count(db: &TestDb, n: usize) -> std::collections::BTreeMap<String, i64> {
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("stamp", format!("agg-{}", i % 20), json!({"n": i})))
        .collect();
    let ids = insert_events(&db.pool, &events).await;
    let counts = wait_settled(&db.pool, "stamp", before + n as i64, PATIENCE).await;
    assert_eq!(counts.done, before + n as i64, "{counts:?}");
    assert_eq!(stamp_duplicates(&db.pool).await, 0, "second applications");
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT version, count(*) FROM stamps WHERE event_id = ANY($1) GROUP BY version",
    )
    .bind(&ids)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// The active version's label and source, as `GET /projections/stamp/status` shows them.
fn active_in_status(host: &Host) -> (String, String) {
    let (status, body) = host.send("GET", "/projections/stamp/status", None, b"");
    assert_eq!(status, 200, "{body}");
    (
        body["plugin"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["plugin"]["source"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Each host's outcomes by version label prefix (`stamp@1.0.0`), from its
/// `projector_version_outcomes_total`.
fn outcomes_of(host: &Host, version_prefix: &str) -> f64 {
    parse_metrics(&host.metrics())
        .into_iter()
        .filter(|s| s.name == "projector_version_outcomes_total")
        .filter(|s| {
            s.labels
                .iter()
                .any(|(k, v)| k == "version" && v.starts_with(version_prefix))
        })
        .map(|s| s.value)
        .sum()
}

/// The WARN records a host logged at start about its file and the database's version.
fn start_warnings(host: &Host, message_part: &str) -> Vec<Value> {
    host.log_lines()
        .into_iter()
        .filter(|r| field_str(r, "level").as_deref() == Some("WARN"))
        .filter(|r| field_str(r, "message").is_some_and(|m| m.contains(message_part)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_loaded_over_http_survives_a_restart_of_both_replicas_which_warn_that_their_file_differs(
) {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let mut a = replica(&db, &config, &[]);
    let mut b = replica(&db, &config, &[]);
    assert!(active_in_status(&a).0.starts_with("stamp@1.0.0+"));
    assert_eq!(active_in_status(&a).1, "file");

    let (status, body) = a.send(
        "PUT",
        "/projections/stamp/plugin",
        Some(TOKEN),
        &std::fs::read(plugin("stamp_v2")).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let v2 = body["version"].as_str().unwrap().to_owned();
    assert_eq!(active_in_status(&b), (v2.clone(), "upload".to_owned()));

    // Both replicas restart (a reschedule), their config still naming the v1 file.
    stop(&mut a);
    stop(&mut b);
    let a = replica(&db, &config, &[]);
    let b = replica(&db, &config, &[]);
    for host in [&a, &b] {
        let warned = start_warnings(host, "differs from the database's active version");
        assert_eq!(warned.len(), 1, "host {}: {warned:?}", host.worker_id);
        let w = &warned[0];
        assert!(
            field_str(w, "file_version")
                .unwrap()
                .starts_with("stamp@1.0.0+"),
            "{w}"
        );
        assert_eq!(
            field_str(w, "active_version").as_deref(),
            Some(v2.as_str()),
            "{w}"
        );
        assert_eq!(
            field_str(w, "active_source").as_deref(),
            Some("upload"),
            "{w}"
        );
        assert_eq!(field_str(w, "policy").as_deref(), Some("database"), "{w}");
        assert!(
            field_str(w, "message")
                .unwrap()
                .contains("OUTBOX_PLUGIN_FILE_POLICY"),
            "the warning names the setting: {w}"
        );
    }
    let by_version = write_and_count(&db, 60).await;
    assert_eq!(by_version.get("2.0.0"), Some(&60), "{by_version:?}");
    for host in [&a, &b] {
        assert_eq!(
            outcomes_of(host, "stamp@1.0.0"),
            0.0,
            "host {} ran v1 after the restart",
            host.worker_id
        );
    }
    eprintln!(
        "after the restart: events by version {by_version:?}; v2 outcomes per host: a {}, b {}",
        outcomes_of(&a, "stamp@2.0.0"),
        outcomes_of(&b, "stamp@2.0.0")
    );
    assert_eq!(active_in_status(&a), (v2.clone(), "upload".to_owned()));
    // `projector status` says the same, with the source.
    let out = run_projector(
        &["status", "--projection", "stamp"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("{v2} (upload)")), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_file_policy_both_replicas_come_back_on_the_configured_file() {
    let db = TestDb::new().await;
    db.migrate();
    let (_dir, config) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let mut a = replica(&db, &config, &[]);
    let mut b = replica(&db, &config, &[]);
    let (status, body) = a.send(
        "PUT",
        "/projections/stamp/plugin",
        Some(TOKEN),
        &std::fs::read(plugin("stamp_v2")).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    stop(&mut a);
    stop(&mut b);

    let policy = [("OUTBOX_PLUGIN_FILE_POLICY", "file")];
    let a = replica(&db, &config, &policy);
    let b = replica(&db, &config, &policy);
    // The first one back activates its file over the uploaded version, and says so; the second
    // finds its file active.
    let replaced = start_warnings(
        &a,
        "the configured file replaces the database's active version",
    );
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(field_str(&replaced[0], "replaced")
        .unwrap()
        .starts_with("stamp@2.0.0+"));
    assert!(start_warnings(&b, "replaces").is_empty());
    let (version, source) = active_in_status(&b);
    assert!(version.starts_with("stamp@1.0.0+"), "{version}");
    assert_eq!(source, "file");
    let by_version = write_and_count(&db, 60).await;
    assert_eq!(by_version.get("1.0.0"), Some(&60), "{by_version:?}");
    for host in [&a, &b] {
        assert_eq!(
            outcomes_of(host, "stamp@2.0.0"),
            0.0,
            "host {}",
            host.worker_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_database_has_never_seen_is_a_new_deploy_and_runs() {
    let db = TestDb::new().await;
    db.migrate();
    let (dir, config) = stamp_projection(&db, "stamp.wasm").await;
    let live = dir.path().join("stamp.wasm");
    std::fs::copy(plugin("stamp_v1"), &live).unwrap();
    let mut host = replica(&db, &config, &[("OUTBOX_PLUGIN_WATCH_SECONDS", "0")]);
    stop(&mut host);
    // The deploy replaces the file while the host is down.
    std::fs::copy(plugin("stamp_v2"), &live).unwrap();
    let host = replica(&db, &config, &[("OUTBOX_PLUGIN_WATCH_SECONDS", "0")]);
    let (version, source) = active_in_status(&host);
    assert!(version.starts_with("stamp@2.0.0+"), "{version}");
    assert_eq!(source, "file");
    let noted = start_warnings(&host, "a version the database has never been given");
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert_eq!(write_and_count(&db, 20).await.get("2.0.0"), Some(&20));
}
