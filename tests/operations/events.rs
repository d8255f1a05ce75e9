//! Listing failed and blocked events, for the ids `projector skip --ids` and `replay --ids`
//! take: `projector events` reads the database like `projector status`; `GET
//! /projections/{name}/events` and `.../events/{event}` answer the same with the token, and a
//! request a browser marks as cross-site is refused before anything is read or changed.

use crate::common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

fn events_cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    let mut all = vec!["events", "--projection", "p"];
    all.extend_from_slice(args);
    run_projector(&all, &[("DATABASE_URL", db.url.as_str())])
}

fn events_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = events_cli(db, &all);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn seqs(rows: &Value) -> Vec<i64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

/// Failed events with two reasons, one of them blocking a later event of its aggregate, and
/// done ones; settled by a host that is then stopped. Returns the ids in insert order.
async fn seeded(db: &TestDb) -> Vec<uuid::Uuid> {
    let events = vec![
        NewEvent::new(
            "p",
            "a",
            json!({"outcome": "deterministic", "reason": "bad_payload", "title": "first"}),
        ),
        NewEvent::new("p", "a", json!({"outcome": "success"})),
        NewEvent::new(
            "p",
            "b",
            json!({"outcome": "deterministic", "reason": "es_mapping", "message": "mapping conflict on title"}),
        ),
        NewEvent::new("p", "c", json!({"outcome": "success"})),
        NewEvent::new(
            "p",
            "d",
            json!({"outcome": "deterministic", "reason": "bad_payload", "title": "second"}),
        ),
    ];
    let ids = insert_events(&db.pool, &events).await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &format!("p={}", plugin("scripted").display())],
        &[],
    );
    host.wait_ready(PATIENCE);
    wait_until("3 failed and 1 done", PATIENCE, async || {
        let c = status_counts(&db.pool, "p").await;
        (c.failed, c.done, c.pending, c.processing) == (3, 1, 1, 0)
    })
    .await;
    host.sigterm();
    host.wait_exit(secs(30));
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_events_lists_failed_and_blocked_events_with_ids_reasons_and_payload_excerpts() {
    let db = TestDb::new().await;
    db.migrate();
    let ids = seeded(&db).await;
    let seq: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox_events ORDER BY seq")
        .fetch_all(&db.pool)
        .await
        .unwrap();

    // Failed, by default; oldest first, with what skip --ids needs.
    let failed = events_json(&db, &[]);
    assert_eq!(seqs(&failed), [seq[0], seq[2], seq[4]]);
    assert_eq!(failed[0]["id"], ids[0].to_string());
    assert_eq!(failed[0]["error_reason"], "bad_payload");
    assert_eq!(failed[0]["failure_kind"], "deterministic");
    assert!(
        failed[0]["payload_excerpt"]
            .as_str()
            .unwrap()
            .contains("\"first\""),
        "{failed}"
    );
    assert_eq!(failed[1]["error_excerpt"], "mapping conflict on title");
    assert!(failed[1]["projection_version"]
        .as_str()
        .unwrap()
        .starts_with("scripted@"));

    // By reason; a page and the next one.
    assert_eq!(
        seqs(&events_json(&db, &["--reason", "bad_payload"])),
        [seq[0], seq[4]]
    );
    assert_eq!(seqs(&events_json(&db, &["--limit", "2"])), [seq[0], seq[2]]);
    let after = seq[2].to_string();
    assert_eq!(
        seqs(&events_json(&db, &["--limit", "2", "--after", &after])),
        [seq[4]]
    );

    // Blocked: the pending event behind the failed one of its aggregate, naming it.
    let blocked = events_json(&db, &["--status", "blocked"]);
    assert_eq!(seqs(&blocked), [seq[1]]);
    assert_eq!(blocked[0]["blocked_by"], seq[0]);
    assert_eq!(
        seqs(&events_json(
            &db,
            &["--status", "blocked", "--reason", "es_mapping"]
        )),
        Vec::<i64>::new()
    );
    assert_eq!(seqs(&events_json(&db, &["--status", "done"])), [seq[3]]);

    // The table names the same ids.
    let out = events_cli(&db, &["--reason", "es_mapping"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("seq"), "{table}");
    assert!(
        table.contains(&ids[2].to_string()) && !table.contains(&ids[0].to_string()),
        "{table}"
    );

    // The ids go straight into skip; one event's detail then shows it skipped, with its audit.
    let skip = run_projector(
        &[
            "skip",
            "--projection",
            "p",
            "--ids",
            &ids[4].to_string(),
            "--by",
            "ops",
            "--reason",
            "poison",
        ],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(skip.status.success(), "{}", output_text(&skip));
    for key in [seq[4].to_string(), ids[4].to_string()] {
        let detail = events_json(&db, &["--event", &key]);
        assert_eq!(detail["status"], "skipped", "{detail}");
        assert_eq!(detail["payload"]["json"]["title"], "second", "{detail}");
        assert_eq!(detail["history"][0]["action"], "skip", "{detail}");
        assert_eq!(detail["history"][0]["reason"], "poison", "{detail}");
        assert_eq!(detail["history"].as_array().unwrap().len(), 1, "{detail}");
    }

    // Bad input: exit code 2, the value named.
    for (args, named) in [
        (vec!["--status", "broken"], "broken"),
        (vec!["--limit", "0"], "0"),
        (vec!["--event", "x1"], "x1"),
        (vec!["--event", "999999"], "--event"),
    ] {
        let out = events_cli(&db, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{args:?}: {}",
            output_text(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_api_needs_the_token_answers_as_the_cli_and_refuses_cross_site_requests() {
    let db = TestDb::new().await;
    db.migrate();
    let ids = seeded(&db).await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &format!("p={}", plugin("scripted").display())],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);

    // Event contents are not open reads.
    for path in ["/projections/p/events", "/projections/p/events/1"] {
        let (status, answer) = host.send("GET", path, None, b"");
        assert_eq!(status, 401, "GET {path}: {answer}");
    }
    let (status, listed) = host.send(
        "GET",
        "/projections/p/events?status=failed",
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["events"],
        events_json(&db, &[]),
        "the API lists what the CLI lists"
    );
    let (_, blocked) = host.send(
        "GET",
        "/projections/p/events?status=blocked",
        Some(TOKEN),
        b"",
    );
    assert_eq!(
        blocked["events"],
        events_json(&db, &["--status", "blocked"])
    );
    let (_, page) = host.send("GET", "/projections/p/events?limit=2", Some(TOKEN), b"");
    let next = page["next_after"].as_i64().expect("a next page");
    let (_, rest) = host.send(
        "GET",
        &format!("/projections/p/events?limit=2&after={next}"),
        Some(TOKEN),
        b"",
    );
    assert_eq!(rest["events"][0]["id"], ids[4].to_string(), "{rest}");
    assert_eq!(rest["next_after"], Value::Null, "{rest}");
    let (status, detail) = host.send(
        "GET",
        &format!("/projections/p/events/{}", ids[2]),
        Some(TOKEN),
        b"",
    );
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["error"], "mapping conflict on title");
    assert_eq!(detail["headers"]["json"], json!({}));
    for (path, code, named) in [
        ("/projections/p/events?status=nope", 400, "nope"),
        ("/projections/p/events?limit=501", 400, "501"),
        ("/projections/p/events?colour=red", 400, "colour"),
        ("/projections/p/events/not-an-event", 400, "not-an-event"),
        ("/projections/p/events/999999", 404, "999999"),
    ] {
        let (status, answer) = host.send("GET", path, Some(TOKEN), b"");
        assert_eq!(status, code, "{path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(named),
            "{path}: {answer}"
        );
    }

    // A write a browser marks as cross-site is refused, token or not, and changes nothing.
    let url = format!("http://127.0.0.1:{}/projections/p/pause", host.port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (header, value) in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Origin", "null"),
    ] {
        let mut r = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .header(header, value)
            .send(&br#"{"reason": "csrf"}"#[..])
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status().as_u16(), 403, "{header}: {value}: {body}");
        assert!(body.contains("cross-site"), "{body}");
    }
    let pauses: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pauses, 0, "no cross-site write went through");
    // The same request from the host's own origin is done.
    let mut r = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Origin", &format!("http://127.0.0.1:{}", host.port))
        .header("Sec-Fetch-Site", "same-origin")
        .send(&br#"{"reason": "same origin"}"#[..])
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    // The history the console charts: samples from memory, every projection of the host. The
    // first sample may predate the failure (it is taken as the host starts), so wait for one
    // taken since: the blocked aggregate must show up in the history.
    wait_until(
        "a history sample with the blocked aggregate",
        PATIENCE,
        async || {
            let (_, h) = host.send("GET", "/projections/p/history", None, b"");
            h["samples"]
                .as_array()
                .and_then(|s| s.last())
                .is_some_and(|last| last["blocked"] == 1)
        },
    )
    .await;
    let (status, _) = host.send("GET", "/projections/nope/history", None, b"");
    assert_eq!(status, 404);
}
