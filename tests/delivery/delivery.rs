//! Delivery: events that succeed are delivered exactly once (counted at the sink, not only by the
//! host), end `done`, and show up in the dispatch metrics; `projector migrate` prepares a table an
//! application can write to with only the required columns.

use crate::common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_events_for_each_of_two_projections_are_delivered_once() {
    let db = TestDb::new().await;
    db.migrate();
    // Both projections run the `stamp` plugin into one `stamps` read model, whose trigger counts
    // any second application of an event (see `stamp_projection`): the sink's own count, beside
    // the host's counters.
    let (dir, _) = stamp_projection(&db, &plugin("stamp_v1").display().to_string()).await;
    let stamp = plugin("stamp_v1").display().to_string();
    let config = write_file(
        dir.path(),
        "two.toml",
        ["a", "b"]
            .map(|name| {
                format!(
                    "[[projection]]\nname = \"{name}\"\nplugin = \"{stamp}\"\n\
                     [projection.grants]\nsql_tables = [\"stamps\"]\n"
                )
            })
            .join("\n"),
    );
    let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);

    // 200 aggregates with 5 events each, so per-aggregate ordering is exercised along the way.
    let batch = |projection: &str, event_type: &str| -> Vec<NewEvent> {
        (0..1000)
            .map(|i| {
                NewEvent::new(
                    projection,
                    format!("book-{}", i % 200),
                    json!({"outcome": "success"}),
                )
                .event_type(event_type)
                .aggregate_type("book")
            })
            .collect()
    };
    insert_events(&db.pool, &batch("a", "book.created")).await;
    insert_events(&db.pool, &batch("b", "book.updated")).await;

    for projection in ["a", "b"] {
        let counts = wait_settled(&db.pool, projection, 1000, PATIENCE).await;
        assert_eq!(
            counts,
            StatusCounts {
                done: 1000,
                ..StatusCounts::default()
            }
        );
        let rows = events(&db.pool, projection).await;
        for row in &rows {
            assert_eq!(row.attempts, 1, "{projection} event {} attempts", row.seq);
            assert!(
                row.done_at.is_some(),
                "{projection} event {} has done_at",
                row.seq
            );
            assert!(
                row.projection_version
                    .as_deref()
                    .is_some_and(|v| !v.is_empty()),
                "{projection} event {} records the plugin version",
                row.seq
            );
            assert_eq!(row.error_reason, None);
            assert_eq!(row.failure_kind, None);
        }
    }
    // At the sink: one stamp per event, and no event applied a second time.
    let (stamped, unstamped, again): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM stamps),
                (SELECT count(*) FROM outbox_events e
                  WHERE NOT EXISTS (SELECT 1 FROM stamps s WHERE s.event_id = e.id)),
                (SELECT count(*) FROM stamp_duplicates)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (stamped, unstamped, again),
        (2000, 0, 0),
        "stamps, events without a stamp, second applications counted at the sink"
    );

    let success = |projection| {
        host.metric(
            "outbox_dispatch_success_total",
            &[("projection", projection)],
        )
    };
    wait_until("both success counters reach 1000", PATIENCE, async || {
        success("a").unwrap_or(0.0) >= 1000.0 && success("b").unwrap_or(0.0) >= 1000.0
    })
    .await;
    assert_eq!(success("a"), Some(1000.0));
    assert_eq!(success("b"), Some(1000.0));
    assert_eq!(
        host.metric(
            "outbox_dispatch_total",
            &[
                ("projection", "a"),
                ("result", "success"),
                ("event_type", "book.created")
            ]
        ),
        Some(1000.0)
    );
    assert_eq!(
        host.metric(
            "outbox_dispatch_total",
            &[
                ("projection", "b"),
                ("result", "success"),
                ("event_type", "book.updated")
            ]
        ),
        Some(1000.0)
    );
    wait_until(
        "the lag of both projections drops to 0",
        PATIENCE,
        async || {
            host.metric("outbox_lag_events", &[("projection", "a")]) == Some(0.0)
                && host.metric("outbox_lag_events", &[("projection", "b")]) == Some(0.0)
        },
    )
    .await;
    assert_eq!(
        host.metric("outbox_dispatch_active", &[("projection", "a")]),
        Some(1.0)
    );
    assert_eq!(
        host.metric("outbox_dispatch_active", &[("projection", "b")]),
        Some(1.0)
    );
    assert!(host.is_ready(), "the host is still ready after the work");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_migrate_an_application_writes_only_the_required_columns_and_events_are_delivered() {
    let db = TestDb::new().await;
    db.migrate();
    // Running it again is harmless.
    db.migrate();

    let ids = insert_events(
        &db.pool,
        &(0..10)
            .map(|i| NewEvent::new("plain", format!("order-{i}"), json!({"outcome": "success"})))
            .collect::<Vec<_>>(),
    )
    .await;
    let rows = events(&db.pool, "plain").await;
    assert_eq!(rows.len(), 10);
    for row in &rows {
        assert_eq!(row.status, "pending");
        assert_eq!(row.attempts, 0);
        assert_eq!(row.aggregate_type, "");
        assert_eq!(row.headers, json!({}));
        assert_eq!(row.claimed_by, None);
    }

    // The table is complete without the host's start-up migration.
    let mut host = Host::start(
        &db.url,
        &[
            "--no-migrate",
            "--plugin",
            &plugin_spec("plain", &plugin("scripted")),
        ],
        &[],
    );
    host.wait_ready(PATIENCE);
    let counts = wait_settled(&db.pool, "plain", 10, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: 10,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "plain").await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(rows.iter().all(|r| r.attempts == 1 && r.done_at.is_some()));
    assert!(rows
        .iter()
        .all(|r| r.claimed_by.as_deref() == Some(host.worker_id.as_str())));
}
