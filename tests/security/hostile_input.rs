//! Hostile input: oversized payloads, payloads that are JSON but not objects, event types the
//! plugin does not declare, SQL metacharacters in every text field, and projection names and
//! plugin paths that try to traverse directories. Each is refused or handled as data, with a
//! reason an operator can read, and nothing else is disturbed.

use crate::common;

use common::*;
use serde_json::{json, Value};

fn config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    write_file(dir, "projector.toml", body)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_payload_fails_before_the_plugin_sees_it_and_the_others_flow() {
    let db = TestDb::new().await;
    db.migrate();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\nmax_payload_bytes = 2000\n",
            plugin("scripted").display()
        ),
    );
    // Were the big one delivered, it would trap the plugin.
    let mut events = vec![NewEvent::new(
        "p",
        "big",
        json!({"outcome": "trap", "pad": "x".repeat(5000)}),
    )];
    events.extend(
        (0..10).map(|i| NewEvent::new("p", format!("a{i}"), json!({"outcome": "success"}))),
    );
    let ids = insert_events(&db.pool, &events).await;
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "p", 11, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (10, 1));
    let big = common::events(&db.pool, "p")
        .await
        .into_iter()
        .find(|r| r.id == ids[0])
        .unwrap();
    assert_eq!(big.error_reason.as_deref(), Some("payload_too_large"));
    assert_eq!(big.failure_kind.as_deref(), Some("deterministic"));
    assert_eq!(big.attempts, 1);
    assert!(big.error.unwrap().contains("max_payload_bytes (2000)"));
    assert_eq!(
        host.metric_sum("projector_plugin_traps_total", &[]),
        0.0,
        "the plugin never saw it"
    );

    let bad = config(
        dir.path(),
        &format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\nmax_payload_bytes = 0\n",
            plugin("scripted").display()
        ),
    );
    let out = run_projector(
        &["run", "--config", bad.to_str().unwrap()],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("projection[0].max_payload_bytes"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undeclared_event_types_are_delivered_skipped_or_failed_as_configured() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    for mode in ["deliver", "skip", "fail"] {
        toml.push_str(&format!(
            "[[projection]]\nname = \"s-{mode}\"\nplugin = \"{}\"\nunknown_event_types = \"{mode}\"\n\
             [projection.config]\nindex = \"idx-{mode}\"\n[projection.grants]\nsearch_indices = [\"idx-{mode}\"]\n",
            plugin("search_index").display()
        ));
    }
    let cfg = config(dir.path(), &toml);
    for mode in ["deliver", "skip", "fail"] {
        let p = format!("s-{mode}");
        insert_events(
            &db.pool,
            &[
                NewEvent::new(&p, "car-1", json!({"model": "T"})).event_type("car.sold"),
                NewEvent::new(&p, "book-1", json!({"title": "Dune"})).event_type("book.created"),
            ],
        )
        .await;
    }
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[("ELASTIC_URL", es.url.as_str())],
    );
    host.wait_ready(PATIENCE);
    for mode in ["deliver", "skip", "fail"] {
        let p = format!("s-{mode}");
        wait_settled(&db.pool, &p, 2, PATIENCE).await;
        let rows = common::events(&db.pool, &p).await;
        let (car, book) = (&rows[0], &rows[1]);
        assert_eq!(book.status, "done", "{mode}: declared types are delivered");
        let error = car.error.clone().unwrap_or_default();
        match mode {
            // The plugin itself answers (it refuses types it cannot map).
            "deliver" => {
                assert_eq!(car.status, "failed");
                assert!(!error.contains("does not declare"), "{error}");
            }
            "skip" => assert_eq!(
                (car.status.as_str(), car.error_reason.as_deref()),
                ("done", None)
            ),
            _ => {
                assert_eq!(car.status, "failed");
                assert_eq!(car.error_reason.as_deref(), Some("unknown_event_type"));
                assert!(
                    error.contains("does not declare event type `car.sold`"),
                    "{error}"
                );
            }
        }
        let docs = es.documents(&format!("idx-{mode}"));
        assert_eq!(docs.keys().collect::<Vec<_>>(), ["book-1"], "{mode}");
    }
    // Postgres itself refuses a payload that is not JSON: the application's insert fails whole.
    let refused = sqlx::query(
        "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload) VALUES ('s-skip', 'book.created', 'x', '{not json')",
    )
    .execute(&db.pool)
    .await;
    assert!(refused.is_err());
    assert_eq!(status_counts(&db.pool, "s-skip").await.total(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_metacharacters_in_every_text_field_are_data_not_code() {
    let db = TestDb::new().await;
    db.migrate();
    create_chronicle_tables(&db.pool).await;
    let nasty = [
        "'; DROP TABLE chronicle_entries; --",
        "x' OR '1'='1",
        "$1 $$ $q$ \\ \\\\ \" `",
        "%_*? ; SELECT pg_sleep(10); --",
        "é 沙丘 \u{202e} \t\n",
    ];
    let mut events = Vec::new();
    for (i, s) in nasty.iter().enumerate() {
        let payload = json!({
            "chronicleEventId": uuid::Uuid::new_v4(), "actorUserId": s, "entityType": s,
            "entityId": format!("{s}{i}"), "eventType": s, "occurredAt": "2025-11-08T10:00:00Z",
            "requestId": s, "reason": s, "before": {"k": s}, "after": {s.to_string(): s},
        });
        events.push(
            NewEvent::new("chronicle", format!("{s}{i}"), payload)
                .event_type(&format!("book.{s}"))
                .aggregate_type(s),
        );
    }
    // One with a broken action context (no actor) fails, to be skipped with a nasty reason.
    events.push(NewEvent::new(
        "chronicle",
        "'; --",
        json!({"entityType": "'", "entityId": "x"}),
    ));
    let ids = insert_events(&db.pool, &events).await;
    sqlx::query("UPDATE outbox_events SET headers = jsonb_build_object($1::text, $1::text)")
        .bind(nasty[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[projection]]\nname = \"chronicle\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"chronicle_entries\"]\n",
            plugin("chronicle_entries").display()
        ),
    );
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "chronicle", 6, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (5, 1));
    let stored: Vec<(String, String, String, String, Option<String>, Option<Value>)> = sqlx::query_as(
        "SELECT entity_id, actor_user_id, entity_type, event_type, reason, after FROM chronicle_entries",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (i, s) in nasty.iter().enumerate() {
        let (_, actor, entity, event_type, reason, after) = stored
            .iter()
            .find(|r| r.0 == format!("{s}{i}"))
            .unwrap_or_else(|| panic!("no entry for {s:?}"));
        assert_eq!(
            (actor.as_str(), entity.as_str(), event_type.as_str()),
            (*s, *s, *s)
        );
        assert_eq!(reason.as_deref(), Some(*s));
        assert_eq!(after.as_ref().unwrap()[*s], json!(s));
    }
    assert_eq!(stored.len(), 5);
    let out = run_projector(
        &[
            "skip",
            "--projection",
            "chronicle",
            "--ids",
            &ids[5].to_string(),
            "--by",
            nasty[1],
            "--reason",
            nasty[0],
        ],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let audit: (String, String) = sqlx::query_as("SELECT performed_by, reason FROM replay_audit")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audit, (nasty[1].to_owned(), nasty[0].to_owned()));
    let tables = db.public_tables().await;
    for t in [
        "chronicle_entries",
        "chronicle_events",
        "outbox_events",
        "replay_audit",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "{t} still exists: {tables:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn projection_names_and_plugin_paths_that_try_to_traverse_are_refused() {
    let db = TestDb::new().await;
    db.migrate();
    let env = [("DATABASE_URL", db.url.as_str())];
    let scripted = plugin("scripted");
    for flag in [
        format!("../../etc={}", scripted.display()),
        format!("..={}", scripted.display()),
        format!("a/b={}", scripted.display()),
    ] {
        let out = run_projector(&["run", "--plugin", &flag], &env);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", output_text(&out));
        assert!(
            output_text(&out).contains("--plugin"),
            "{}",
            output_text(&out)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[projection]]\nname = \".hidden\"\nplugin = \"{}\"\n",
            scripted.display()
        ),
    );
    let out = run_projector(&["run", "--config", cfg.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("projection[0].name"),
        "{}",
        output_text(&out)
    );
    // A plugin path that walks out of the config's directory is just a file that is not a
    // component: refused, named.
    let cfg = config(
        dir.path(),
        "[[projection]]\nname = \"p\"\nplugin = \"../../../../../../../../etc/passwd\"\n",
    );
    let out = run_projector(&["run", "--config", cfg.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("etc/passwd"),
        "{}",
        output_text(&out)
    );

    // Over HTTP, writes for names the host does not run change nothing.
    const TOKEN: &str = "hostile-input-token-0123456789";
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &scripted)],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);
    let component = std::fs::read(&scripted).unwrap();
    for (method, path, body) in [
        (
            "PUT",
            "/projections/..%2F..%2Fetc%2Fpasswd/plugin",
            component.clone(),
        ),
        ("POST", "/projections/..%2Fp/pause", b"{}".to_vec()),
        (
            "POST",
            "/projections/..%2Fp/replay",
            br#"{"reason": "x"}"#.to_vec(),
        ),
        ("POST", "/projections/..%2Fp/rebuild", b"{}".to_vec()),
    ] {
        let (status, answer) = host.send(method, path, Some(TOKEN), &body);
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (pauses, versions, audits): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM projection_pauses),
                (SELECT count(*) FROM plugin_versions WHERE projection <> 'p'),
                (SELECT count(*) FROM replay_audit)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((pauses, versions, audits), (0, 0, 0));
}
