//! The HTTP admin API: reads are open, and every write (plugin upload, rollback, replay, skip,
//! pause, resume, rebuild) needs the bearer token: without it (or with a wrong one) the answer
//! is 401 and nothing changes; with it the write is done.

use crate::common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

/// Everything a write could change, to compare before and after refused requests.
async fn state(pool: &sqlx::PgPool) -> Value {
    let rows: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT status, attempts, replay_count FROM outbox_events ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap();
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM plugin_versions WHERE status = 'active'),
                (SELECT count(*) FROM projection_pauses),
                (SELECT count(*) FROM replay_audit),
                (SELECT count(*) FROM projector_rebuilds)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let active: Option<String> =
        sqlx::query_scalar("SELECT digest FROM plugin_versions WHERE status = 'active'")
            .fetch_optional(pool)
            .await
            .unwrap();
    json!({"rows": rows, "counts": [counts.0, counts.1, counts.2, counts.3], "active": active})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_endpoint_is_401_without_the_token_and_changes_nothing_and_works_with_it() {
    let db = TestDb::new().await;
    db.migrate();
    let ids = insert_events(
        &db.pool,
        &(0..3)
            .map(|i| {
                NewEvent::new(
                    "p",
                    format!("a{i}"),
                    json!({"outcome": "deterministic", "reason": "bad_payload"}),
                )
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "p.toml",
        format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\n[projection.sources]\nlist = \"SELECT gen_random_uuid() AS id, 'x.rebuilt' AS event_type, 'r' || i AS aggregate_id, jsonb_build_object('outcome', 'success') AS payload FROM generate_series(1, 5) AS i\"\n",
            plugin("scripted").display()
        ),
    );
    let mut host = Host::start(
        &db.url,
        &["--config", config.to_str().unwrap()],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);
    assert_eq!(wait_settled(&db.pool, "p", 3, PATIENCE).await.failed, 3);

    let noop = std::fs::read(plugin("noop")).unwrap();
    let replay = json!({"reason": "fixed", "by": "ops"}).to_string();
    let skip = json!({"reason": "poison", "ids": [ids[0]]}).to_string();
    let writes: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("PUT", "/projections/p/plugin", noop.clone(), 200),
        ("POST", "/projections/p/rollback", vec![], 200),
        ("POST", "/projections/p/skip", skip.into_bytes(), 200),
        ("POST", "/projections/p/replay", replay.into_bytes(), 200),
        (
            "POST",
            "/projections/p/pause",
            br#"{"reason": "maintenance"}"#.to_vec(),
            200,
        ),
        ("POST", "/projections/p/resume", vec![], 200),
        (
            "POST",
            "/projections/p/rebuild",
            br#"{"source": "list"}"#.to_vec(),
            202,
        ),
    ];

    let before = state(&db.pool).await;
    for (method, path, body, _) in &writes {
        for token in [None, Some("wrong-token-wrong-token")] {
            let (status, answer) = host.send(method, path, token, body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
        }
    }
    tokio::time::sleep(secs(1)).await;
    assert_eq!(
        state(&db.pool).await,
        before,
        "refused writes changed nothing"
    );

    // Reads are open.
    for path in [
        "/status",
        "/projections/p/status",
        "/projections/p/plugins",
        "/projections/p/audit",
        "/projections/p/rebuilds",
    ] {
        let (status, answer) = host.send("GET", path, None, b"");
        assert_eq!(status, 200, "GET {path}: {answer}");
    }
    let (_, status) = host.send("GET", "/projections/p/status", None, b"");
    assert_eq!(status["counts"]["failed"], 3, "{status}");

    // With the token every write is done.
    for (method, path, body, expected) in &writes {
        let (status, answer) = host.send(method, path, Some(TOKEN), body);
        assert_eq!(status, *expected, "{method} {path}: {answer}");
    }
    let (_, audit) = host.send("GET", "/projections/p/audit", None, b"");
    let actions: Vec<(&str, &str)> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["performed_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("replay", "ops"), ("skip", "test")], "{audit}");
    wait_until("the rebuild finished", PATIENCE, async || {
        let (_, r) = host.send("GET", "/projections/p/rebuilds", None, b"");
        r["rebuilds"][0]["status"] == "succeeded"
    })
    .await;
    let (_, r) = host.send("GET", "/projections/p/rebuilds", None, b"");
    assert_eq!(r["rebuilds"][0]["rows_applied"], 5, "{r}");
    assert_eq!(r["rebuilds"][0]["started_by"], "test", "{r}");
    wait_until("the rebuild metrics", PATIENCE, async || {
        host.metric("projector_rebuild_last_success", &[("projection", "p")]) == Some(1.0)
    })
    .await;
    assert!(
        host.metric(
            "projector_rebuild_last_finished_timestamp_seconds",
            &[("projection", "p")]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(host
        .metric("projector_rebuild_duration_seconds", &[("projection", "p")])
        .is_some());

    // Bad input names what is wrong.
    let (status, answer) = host.send(
        "POST",
        "/projections/p/replay",
        Some(TOKEN),
        br#"{"by": "ops"}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("reason"),
        "{answer}"
    );
    let (status, answer) = host.send(
        "POST",
        "/projections/p/rebuild",
        Some(TOKEN),
        br#"{"source": "nope"}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("nope"),
        "{answer}"
    );
    let (status, answer) = host.send(
        "POST",
        "/projections/p/pause",
        Some(TOKEN),
        br#"{"color": 1}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("color"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_configured_token_writes_are_forbidden_and_reads_still_open() {
    let db = TestDb::new().await;
    db.migrate();
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[],
    );
    host.wait_ready(PATIENCE);
    let (status, _) = host.send("POST", "/projections/p/pause", Some(TOKEN), b"{}");
    assert_eq!(status, 403);
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);
    assert_eq!(host.send("GET", "/status", None, b"").0, 200);
}
