//! The shipped examples keep working: `examples/projector.toml` runs the three seed projections
//! over the writes in `examples/app-writes.sql` (the same run `scripts/demo` shows), and every
//! sink ends with what those writes describe.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_example_config_runs_the_three_seed_projections_into_their_sinks() {
    let db = TestDb::new().await;
    db.migrate();
    let examples = repo_root().join("examples");
    for name in ["0001_chronicle.sql", "0002_query_cache.sql"] {
        let sql = std::fs::read_to_string(examples.join("migrations").join(name)).unwrap();
        sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();
    }
    let writes = std::fs::read_to_string(examples.join("app-writes.sql")).unwrap();
    sqlx::raw_sql(&writes).execute(&db.pool).await.unwrap();
    for name in ["search_index", "chronicle_entries", "query_cache"] {
        plugin(name); // builds the components the config points at
    }
    let osmem = Osmem::start();
    let config = examples.join("projector.toml");
    let mut host = Host::start(
        &db.url,
        &["--config", config.to_str().unwrap()],
        &[("ELASTIC_URL", osmem.url.as_str())],
    );
    host.wait_ready(PATIENCE);
    for (projection, done, failed) in [
        ("search", 25, 1),
        ("chronicle", 40, 0),
        ("query-cache", 7, 1),
    ] {
        let counts = wait_settled(&db.pool, projection, done + failed, PATIENCE).await;
        assert_eq!((counts.done, counts.failed), (done, failed), "{projection}");
    }

    osmem.refresh("books");
    let docs = osmem.documents("books");
    assert_eq!(docs.len(), 11, "12 books created, one deleted: {docs:?}");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM chronicle_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(entries, 40);
    // The example's source query rebuilds the chronicle (here with zero downtime, beside the
    // running host) to the same 40 entries.
    let (out, report) = run_rebuild(
        &db.url,
        &config,
        "chronicle",
        &["--zero-downtime"],
        &[("ELASTIC_URL", osmem.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        (
            report["rows_applied"].as_u64(),
            report["switched"].as_bool()
        ),
        (Some(40), Some(true)),
        "{report}"
    );
    let rebuilt: i64 = sqlx::query_scalar("SELECT count(*) FROM chronicle_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rebuilt, 40);
    let positions: Vec<(String, i32, Option<i32>)> = sqlx::query_as(
        "SELECT position_code, headcount_in_use, job_level_version FROM position_cache ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        positions,
        vec![("P-1".to_owned(), 1, Some(2)), ("P-2".to_owned(), 1, None)]
    );
}
