//! Rebuilding the chronicle read model (seed 004) from its source of truth, `chronicle_events`:
//! directly through the plugin, through the outbox, and with zero downtime (shadow table,
//! catch-up, atomic switch) while the application keeps writing and readers keep reading.

use crate::common;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The source query, as an operator puts it in `[projection.sources]`: the same payload the
/// application writes into the outbox.
const SOURCE_QUERY: &str = "SELECT id, event_type, entity_type AS aggregate_type, entity_type || ':' || entity_id AS aggregate_id, occurred_at, jsonb_build_object('chronicleEventId', id, 'actorUserId', actor_user_id, 'entityType', entity_type, 'entityId', entity_id, 'eventType', event_type, 'before', before, 'after', after, 'occurredAt', occurred_at, 'requestId', request_id, 'reason', reason) AS payload FROM chronicle_events ORDER BY occurred_at, id";

/// `n` application changes in a fresh database, projected incrementally by a running host.
async fn projected(n: i64) -> (TestDb, tempfile::TempDir, std::path::PathBuf, Host) {
    let (db, dir, config) = setup(n).await;
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "chronicle", n, secs(180)).await;
    assert_eq!(counts.done, n, "{counts:?}");
    (db, dir, config, host)
}

async fn setup(n: i64) -> (TestDb, tempfile::TempDir, std::path::PathBuf) {
    let db = TestDb::new().await;
    db.migrate();
    create_chronicle_tables(&db.pool).await;
    sqlx::raw_sql(&chronicle_writes(1, n, 50))
        .execute(&db.pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "chronicle.toml",
        format!(
            "batch_size = 200\n[[projection]]\nname = \"chronicle\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"chronicle_entries\"]\nsource_tables = [\"chronicle_events\"]\n[projection.sources]\nchronicle_events = \"{SOURCE_QUERY}\"\n",
            plugin("chronicle_entries").display()
        ),
    );
    (db, dir, config)
}

fn rebuild(db: &TestDb, config: &std::path::Path, extra: &[&str]) -> (std::process::Output, Value) {
    run_rebuild(&db.url, config, "chronicle", extra, &[])
}

/// Damages the read model: drops a tenth of the entries and garbles another tenth.
async fn damage(pool: &sqlx::PgPool) {
    sqlx::raw_sql(
        "DELETE FROM chronicle_entries WHERE request_id LIKE '%1';
         UPDATE chronicle_entries SET summary = 'stale' WHERE request_id LIKE '%2'",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_and_outbox_rebuilds_of_10k_source_rows_equal_the_incremental_result() {
    let (db, _dir, config, mut host) = projected(10_000).await;
    host.sigterm();
    host.wait_exit(secs(30));
    drop(host);
    let incremental = chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await;
    assert_eq!(incremental.len(), 10_000);
    assert_eq!(
        incremental,
        chronicle_rows(&db.pool, CHRONICLE_FOLD).await,
        "the incremental result is the fold"
    );

    // A source without the columns a rebuild needs changes nothing and names what is missing.
    damage(&db.pool).await;
    let damaged = chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await;
    let (out, _) = rebuild(&db, &config, &["--truncate", "--source", "SELECT 1 AS x"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("`id`"), "{}", output_text(&out));
    assert_eq!(
        chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await,
        damaged,
        "nothing was truncated"
    );

    // Direct: through the plugin, into the (emptied) live table.
    let (out, report) = rebuild(&db, &config, &["--truncate"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        (
            &report["mode"],
            &report["rows_read"],
            &report["rows_applied"],
            &report["rows_failed"]
        ),
        (
            &Value::from("direct"),
            &Value::from(10_000),
            &Value::from(10_000),
            &Value::from(0)
        ),
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rows read"),
        "progress is printed"
    );
    assert_eq!(
        chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await,
        incremental,
        "direct rebuild = incremental"
    );

    // Outbox: the source rows become outbox events the host consumes.
    damage(&db.pool).await;
    let (out, report) = rebuild(&db, &config, &["--truncate", "--emit-outbox"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        (&report["mode"], &report["rows_applied"]),
        (&Value::from("outbox"), &Value::from(10_000)),
        "{report}"
    );
    assert_eq!(
        chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await.len(),
        0,
        "truncated; the hosts rebuild it"
    );
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    assert_eq!(
        wait_settled(&db.pool, "chronicle", 20_000, secs(180))
            .await
            .done,
        20_000
    );
    assert_eq!(
        chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await,
        incremental,
        "outbox rebuild = incremental"
    );

    let recorded: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT mode, status, rows_applied FROM projector_rebuilds ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [
            ("direct".into(), "failed".into(), 0),
            ("direct".into(), "succeeded".into(), 10_000),
            ("outbox".into(), "succeeded".into(), 10_000)
        ],
        "every attempt is recorded, the one with the bad source as failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_downtime_rebuild_switches_atomically_while_the_application_writes_and_readers_read() {
    let (db, _dir, config, host) = projected(10_000).await;
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Readers: every read sees either the old model (all 10k entries projected before the
    // rebuild started) or the new one (none of them), and never fewer entries than before.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let pool = db.new_pool().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let (mut last, mut old_seen, mut new_seen, mut reads) = (0i64, false, false, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let (total, old): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE projected_at < $1) FROM chronicle_entries",
                )
                .bind(started)
                .fetch_one(&pool)
                .await
                .unwrap();
                assert!(old == 10_000 || old == 0, "a partial model: {old} old entries of {total}");
                assert!(total >= last && total >= 10_000, "entries went from {last} to {total}");
                last = total;
                old_seen |= old == 10_000;
                new_seen |= old == 0;
                reads += 1;
            }
            (old_seen, new_seen, reads)
        }));
    }
    // The application keeps writing: 20 changes every 100 ms.
    let writer = {
        let pool = db.new_pool().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 10_001;
            while !stop.load(Ordering::Relaxed) {
                sqlx::raw_sql(&chronicle_writes(next, 20, 50))
                    .execute(&pool)
                    .await
                    .unwrap();
                next += 20;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            next - 10_001
        })
    };

    let (out, report) = {
        let (db_url, config) = (db.url.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            run_rebuild(&db_url, &config, "chronicle", &["--zero-downtime"], &[])
        })
        .await
        .unwrap()
    };
    tokio::time::sleep(secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let mut reads = 0;
    let (mut old_seen, mut new_seen) = (false, false);
    for r in readers {
        let (o, n, k) = r.await.unwrap();
        old_seen |= o;
        new_seen |= n;
        reads += k;
    }
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report["switched"], true, "{report}");
    assert_eq!(report["rows_failed"], 0, "{report}");
    assert!(report["rows_read"].as_u64().unwrap() >= 10_000, "{report}");
    assert!(
        report["caught_up"].as_u64().unwrap() > 0,
        "events the host applied during the build were caught up: {report}"
    );
    assert!(
        old_seen && new_seen,
        "readers saw the old model, then the new one ({reads} reads)"
    );

    // Everything the application wrote is in the model exactly as the fold says, and every
    // outbox row is done.
    let total = 10_000 + written as i64;
    assert_eq!(
        wait_settled(&db.pool, "chronicle", total, secs(120))
            .await
            .done,
        total
    );
    assert_eq!(
        chronicle_rows(&db.pool, CHRONICLE_ENTRIES).await,
        chronicle_rows(&db.pool, CHRONICLE_FOLD).await
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'projector_rebuild%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "the shadow schema is gone");
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0, "the switch's pause was lifted");
    wait_until("the host exports the rebuild", PATIENCE, async || {
        host.metric(
            "projector_rebuild_last_success",
            &[("projection", "chronicle")],
        ) == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_downtime_rebuild_of_a_search_index_swaps_it_in_behind_its_name_while_readers_read() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    // 200 books, each created and renamed twice.
    let book = |n: i64, round: usize| {
        let action = if round == 0 { "created" } else { "renamed" };
        NewEvent::new(
            "search",
            format!("book-{n:04}"),
            serde_json::json!({"title": format!("Book {n} v{round}")}),
        )
        .event_type(&format!("book.{action}"))
        .aggregate_type("book")
    };
    let history: Vec<NewEvent> = (0..3)
        .flat_map(|round| (0..200).map(move |n| book(n, round)))
        .collect();
    insert_events(&db.pool, &history).await;
    // The source: the latest event of each book, with its outbox seq (the documents' version).
    let source = "SELECT DISTINCT ON (aggregate_id) id, event_type, aggregate_type, aggregate_id, payload, seq FROM outbox_events WHERE projection = 'search' ORDER BY aggregate_id, seq DESC";
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "search.toml",
        format!(
            "[[projection]]\nname = \"search\"\nplugin = \"{}\"\n[projection.config]\nindex = \"books\"\n[projection.grants]\nsearch_indices = [\"books\"]\nsource_tables = [\"outbox_events\"]\n[projection.sources]\nlatest = \"{source}\"\n",
            plugin("search_index").display()
        ),
    );
    let env = [("ELASTIC_URL", es.url.as_str())];
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &env);
    host.wait_ready(PATIENCE);
    assert_eq!(
        wait_settled(&db.pool, "search", 600, PATIENCE).await.done,
        600
    );
    es.refresh("books");

    // Readers count the documents behind `books`: never fewer than before, never a part.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, stop) = (es.url.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .build()
                .into();
            let (mut last, mut reads) = (0i64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let mut r = agent.get(&format!("{url}/books/_count")).call().unwrap();
                let body: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                let count = body["count"].as_i64().unwrap_or_else(|| panic!("{body}"));
                assert!(
                    count >= 200 && count >= last,
                    "books went from {last} to {count} documents"
                );
                last = count;
                reads += 1;
            }
            reads
        })
    };
    // The application keeps creating books.
    let writer = {
        let (pool, stop) = (db.new_pool().await, stop.clone());
        tokio::spawn(async move {
            let mut n = 1000;
            while !stop.load(Ordering::Relaxed) {
                insert_events(&pool, &[book(n, 0)]).await;
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            n - 1000
        })
    };
    let (out, report) = {
        let (db_url, config, es_url) = (db.url.clone(), config.clone(), es.url.clone());
        tokio::task::spawn_blocking(move || {
            let env = [("ELASTIC_URL", es_url.as_str())];
            run_rebuild(&db_url, &config, "search", &["--zero-downtime"], &env)
        })
        .await
        .unwrap()
    };
    tokio::time::sleep(secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let reads = reader.await.unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        (report["switched"].as_bool(), report["rows_failed"].as_u64()),
        (Some(true), Some(0)),
        "{report}"
    );
    assert!(report["rows_read"].as_u64().unwrap() >= 200, "{report}");
    assert!(reads > 10, "the readers read throughout ({reads} reads)");
    assert!(
        report["caught_up"].as_u64().unwrap() > 0,
        "books the host indexed during the build were caught up: {report}"
    );

    // `books` is now an alias of the new index, which holds the fold of every event.
    let (_, aliases) = es.request("GET", "/_alias/books", None);
    let physical: Vec<&String> = aliases.as_object().unwrap().keys().collect();
    assert_eq!(physical.len(), 1, "{aliases}");
    assert!(physical[0].starts_with("books-rebuild-"), "{aliases}");
    let total = 600 + written as i64;
    assert_eq!(
        wait_settled(&db.pool, "search", total, PATIENCE).await.done,
        total
    );
    let rows = common::events(&db.pool, "search").await;
    let mut latest: std::collections::BTreeMap<String, &EventRow> = Default::default();
    for r in &rows {
        latest.insert(r.aggregate_id.clone(), r);
    }
    let docs = es.documents("books");
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        latest.keys().collect::<Vec<_>>()
    );
    for (id, row) in &latest {
        assert_eq!(docs[id].source["title"], row.payload["title"], "{id}");
        assert_eq!(
            docs[id].version, row.seq,
            "{id}: the version of its latest event"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_downtime_search_rebuild_without_a_seq_column_is_refused_before_anything_is_built() {
    let db = TestDb::new().await;
    db.migrate();
    let es = Osmem::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "search.toml",
        format!(
            "[[projection]]\nname = \"search\"\nplugin = \"{}\"\n[projection.config]\nindex = \"books\"\n[projection.grants]\nsearch_indices = [\"books\"]\nsource_tables = [\"outbox_events\"]\n",
            plugin("search_index").display()
        ),
    );
    insert_events(
        &db.pool,
        &[
            NewEvent::new("search", "book-1", serde_json::json!({"title": "Dune"}))
                .event_type("book.created"),
        ],
    )
    .await;
    let out = run_projector(
        &[
            "rebuild",
            "--config",
            config.to_str().unwrap(),
            "--projection",
            "search",
            "--zero-downtime",
            "--source",
            "SELECT id, event_type, aggregate_id, payload FROM outbox_events",
        ],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("ELASTIC_URL", es.url.as_str()),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("`seq` column"),
        "{}",
        output_text(&out)
    );
    let (_, indices) = es.request("GET", "/_cat/indices?format=json", None);
    assert_eq!(
        indices.as_array().map(Vec::len),
        Some(0),
        "nothing was built: {indices}"
    );
}
