//! The test harness itself (tests/common): every scenario relies on these pieces, so a broken
//! harness shows up here, by name, rather than as a confusing scenario failure.

use crate::common;

use common::*;
use serde_json::json;

#[test]
fn prometheus_samples_are_matched_by_their_exact_label_set() {
    let text = "# HELP outbox_dispatch_total Outcomes.\n# TYPE outbox_dispatch_total counter\n\
                outbox_dispatch_total{projection=\"a\",result=\"success\",event_type=\"b.c\"} 1000\n\
                outbox_dispatch_total{projection=\"a\",result=\"retry\",event_type=\"b.c\"} 3\n\
                outbox_lag_events{projection=\"a\"} 0\n\
                odd{l=\"with \\\"quote\\\", comma\"} 2.5 1700000000\n\
                plain 7\n";
    let value = |name, labels| metric_value(text, name, labels);
    assert_eq!(
        value(
            "outbox_dispatch_total",
            &[
                ("event_type", "b.c"),
                ("result", "success"),
                ("projection", "a")
            ]
        ),
        Some(1000.0)
    );
    assert_eq!(value("outbox_dispatch_total", &[("projection", "a")]), None);
    assert_eq!(
        value("outbox_lag_events", &[("projection", "a")]),
        Some(0.0)
    );
    assert_eq!(value("odd", &[("l", "with \"quote\", comma")]), Some(2.5));
    assert_eq!(value("plain", &[]), Some(7.0));
    let retries: f64 = parse_metrics(text)
        .iter()
        .filter(|s| s.name == "outbox_dispatch_total" && s.has_labels(&[("projection", "a")]))
        .map(|s| s.value)
        .sum();
    assert_eq!(retries, 1003.0);
}

#[test]
fn database_urls_get_their_database_replaced() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
        "postgres://postgres@127.0.0.1:5432/t_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1?sslmode=disable", "t_1"),
        "postgres://u:p@h:1/t_1?sslmode=disable"
    );
}

#[test]
fn the_scripted_plugin_is_built_on_demand() {
    let path = plugin("scripted");
    let bytes = std::fs::read(&path).expect("read the component");
    // A component starts with the wasm magic and a layer-1 (component) version field.
    assert_eq!(&bytes[..4], b"\0asm");
    assert_eq!(&bytes[6..8], &[1, 0], "{} is a component", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_test_gets_a_fresh_database_that_takes_events() {
    let first = TestDb::new().await;
    let second = TestDb::new().await;
    assert_ne!(first.name, second.name);
    assert!(first.public_tables().await.is_empty());

    // The real migration, not a copy of it, so the harness's inserts are checked against it.
    sqlx::raw_sql(include_str!("../../migrations/0001_outbox_events.sql"))
        .execute(&first.pool)
        .await
        .expect("apply the migration");
    let ids = insert_events(
        &first.pool,
        &[
            NewEvent::new("p", "agg-1", json!({"outcome": "success"})),
            NewEvent::new("p", "agg-1", json!({"outcome": "success"})).event_type("x.y"),
            NewEvent::new("q", "agg-2", json!({})),
        ],
    )
    .await;
    let typed = insert_events(
        &first.pool,
        &[NewEvent::new("p", "agg-3", json!(1)).aggregate_type("book")],
    )
    .await;

    let rows = events(&first.pool, "p").await;
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1], typed[0]],
        "ids come back in insertion (seq) order"
    );
    assert_eq!(rows[1].event_type, "x.y");
    assert_eq!(rows[0].aggregate_type, "");
    assert_eq!(rows[2].aggregate_type, "book");
    assert!(rows
        .iter()
        .all(|r| r.status == "pending" && r.attempts == 0));
    assert_eq!(
        status_counts(&first.pool, "p").await,
        StatusCounts {
            pending: 3,
            ..StatusCounts::default()
        }
    );
    assert!(
        second.public_tables().await.is_empty(),
        "databases are separate"
    );

    wait_until("a trivially true condition holds", secs(1), async || true).await;
}
