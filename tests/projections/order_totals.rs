//! The order-totals example (`examples/order-totals`): a running total per customer whose effect
//! is an increment, kept idempotent by an applied-events table (`sql::apply_once`). The test kit
//! delivers every event twice and catches a version that counts twice; a real host keeps the
//! totals right when the whole history is delivered again; a new version is backfilled over the
//! history by a zero-downtime rebuild from the outbox.
//!
//! The negative controls run `order-totals-naive` (the same increment without the applied-events
//! table) through the same checks: they must fail, or the checks prove nothing.

use crate::common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PROJECTION: &str = "order-totals";

fn example() -> PathBuf {
    repo_root().join("examples/order-totals")
}

/// A database with the outbox and the example's model (both migrations).
async fn model_db() -> TestDb {
    let db = TestDb::new().await;
    db.migrate();
    for name in ["0001_order_totals.sql", "0002_order_count.sql"] {
        let sql = std::fs::read_to_string(example().join("migrations").join(name)).unwrap();
        sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();
    }
    db
}

/// The example's `projector.toml`, with `plugin` (a component under plugins/) as its plugin.
fn config_for(dir: &Path, plugin_name: &str) -> PathBuf {
    let text = std::fs::read_to_string(example().join("projector.toml")).unwrap();
    let shipped = "../../plugins/target/wasm32-wasip2/release/order_totals.wasm";
    assert!(text.contains(shipped), "the example config names {shipped}");
    let path = plugin(plugin_name);
    write_file(
        dir,
        format!("{plugin_name}.toml"),
        text.replace(shipped, path.to_str().unwrap()),
    )
}

/// One order event: `(order, customer, cents)`, placed, or cancelled when `cents` is negative.
fn order(order: u32, customer: &str, cents: i64) -> NewEvent {
    let kind = if cents < 0 {
        "order.cancelled"
    } else {
        "order.placed"
    };
    NewEvent::new(
        PROJECTION,
        format!("order-{order}"),
        json!({"customer_id": customer, "amount_cents": cents.abs()}),
    )
    .event_type(kind)
    .aggregate_type("order")
}

/// `count` orders over three customers, every fifth one cancelled again.
fn orders(first: u32, count: u32) -> (Vec<NewEvent>, Vec<(String, i64)>) {
    let mut events = Vec::new();
    let mut effects = Vec::new();
    for n in first..first + count {
        let customer = format!("c-{}", n % 3);
        let cents = 100 * i64::from(n) + 5;
        events.push(order(n, &customer, cents));
        effects.push((customer.clone(), cents));
        if n % 5 == 0 {
            events.push(order(n, &customer, -cents));
            effects.push((customer, -cents));
        }
    }
    (events, effects)
}

/// customer → (total_cents, orders): what `effects` add up to, each applied once.
fn fold(effects: &[(String, i64)]) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (customer, cents) in effects {
        let row = out.entry(customer.clone()).or_default();
        row.0 += cents;
        row.1 += cents.signum();
    }
    out
}

/// customer → (total_cents, orders) as the model holds it.
async fn totals(pool: &sqlx::PgPool) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i32)> =
        sqlx::query_as("SELECT customer_id, total_cents, orders FROM order_totals")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(c, t, o)| (c, (t, i64::from(o))))
        .collect()
}

async fn applied(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM order_totals_applied")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_kit_passes_the_example_delivered_twice_and_catches_a_version_that_counts_twice() {
    let db = model_db().await;
    let events = example().join("tests/events.jsonl");
    let kit = |plugin_name: &str, extra: &[&str]| {
        let component = plugin(plugin_name);
        let mut args = vec![
            "plugin",
            "test",
            component.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--deliver-twice",
        ];
        args.extend_from_slice(extra);
        let out = run_projector(&args, &[]);
        (out.status.code(), output_text(&out))
    };
    let with_db = [
        "--database-url",
        db.url.as_str(),
        "--sql-table",
        "order_totals",
    ];
    let expected = example().join("tests/expected.jsonl");
    let mut pinned = with_db.to_vec();
    pinned.extend(["--expect", expected.to_str().unwrap()]);

    // The example: every redelivery finds its id applied and changes nothing.
    let (code, text) = kit("order_totals", &pinned);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("expectations met"), "{text}");
    assert!(!text.contains("NOT IDEMPOTENT"), "{text}");
    assert!(
        text.contains(r#"{"orders": 1, "customer_id": "c-1", "total_cents": 750}"#),
        "placed 1250 + 750, cancelled 1250: {text}"
    );

    // Negative control: the same increment without the applied-events table.
    let (code, text) = kit("order_totals_naive", &with_db);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("NOT IDEMPOTENT: delivering event 2 again changed the sink:")
            && text.contains(
                r#"order_totals: - {"orders": 0, "customer_id": "c-2", "total_cents": 4000}"#
            )
            && text.contains(
                r#"order_totals: + {"orders": 0, "customer_id": "c-2", "total_cents": 8000}"#
            ),
        "{text}"
    );
    assert!(
        text.contains("the plugin is not idempotent: 4 of its redelivered events changed the sink"),
        "{text}"
    );
    // ... and its expectation file catches it too: a redelivery must only find its id.
    let (code, text) = kit("order_totals_naive", &pinned);
    assert_eq!(code, Some(1), "{text}");

    // Each run was one transaction, rolled back.
    assert!(totals(&db.pool).await.is_empty());
    assert_eq!(applied(&db.pool).await, 0);

    // The Python port, on the Python SDK's apply_once, meets the same expectation file.
    let dir = tempfile::tempdir().unwrap();
    let python = componentize_py(
        "sql-plugin",
        &repo_root().join("examples/python/order_totals"),
        "app",
        &dir.path().join("order_totals_py.wasm"),
    );
    let mut args = vec![
        "plugin",
        "test",
        python.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--deliver-twice",
    ];
    args.extend_from_slice(&pinned);
    // Compiling the 18 MB component takes a while on a loaded machine (docs/plugins.md).
    let out = run_projector_within(&args, &[], secs(300));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("expectations met"),
        "{}",
        output_text(&out)
    );

    // Without a database the kit says what it could not check, rather than passing silently.
    let (code, text) = kit("order_totals", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("note: the sql stand-in keeps no rows"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_stay_right_when_a_host_delivers_the_whole_history_again() {
    for (plugin_name, copies) in [("order_totals", 1), ("order_totals_naive", 2)] {
        let db = model_db().await;
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path(), plugin_name);
        let (mut events, effects) = orders(1, 10);
        events.push(
            NewEvent::new(
                PROJECTION,
                "order-99",
                json!({"customer_id": "c-1", "amount_cents": "12.50"}),
            )
            .event_type("order.placed"),
        );
        insert_events(&db.pool, &events).await;
        let mut host = Host::start(&db.url, &["--config", config.to_str().unwrap()], &[]);
        host.wait_ready(PATIENCE);
        let counts = wait_settled(&db.pool, PROJECTION, events.len() as i64, PATIENCE).await;
        assert_eq!(
            (counts.done, counts.failed),
            (events.len() as i64 - 1, 1),
            "{plugin_name}"
        );
        let once = fold(&effects);
        if plugin_name == "order_totals" {
            assert_eq!(totals(&db.pool).await, once);
        }
        host.sigterm();
        host.wait_exit(PATIENCE);

        // A rebuild over the live model (no --truncate) delivers every applied event again.
        let (out, report) =
            run_rebuild(&db.url, &config, PROJECTION, &["--source", "history"], &[]);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(report["rows_applied"], json!(events.len() - 1), "{report}");

        let want: BTreeMap<_, _> = once
            .iter()
            .map(|(c, (t, o))| {
                (
                    c.clone(),
                    (
                        t * copies,
                        if plugin_name == "order_totals" { *o } else { 0 },
                    ),
                )
            })
            .collect();
        assert_eq!(
            totals(&db.pool).await,
            want,
            "{plugin_name}: each event {}",
            if copies == 1 {
                "counted once"
            } else {
                "counted twice (the negative control)"
            }
        );
        if plugin_name == "order_totals" {
            assert_eq!(applied(&db.pool).await, events.len() as i64 - 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_is_backfilled_over_the_history_by_a_zero_downtime_rebuild() {
    let db = model_db().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = config_for(dir.path(), "order_totals_v1");
    let v2 = config_for(dir.path(), "order_totals");

    // Version 1 applies the first orders: totals only.
    let (first, mut effects) = orders(1, 12);
    insert_events(&db.pool, &first).await;
    let mut host = Host::start(&db.url, &["--config", v1.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, PROJECTION, first.len() as i64, PATIENCE).await;
    let after_v1 = totals(&db.pool).await;
    let want_v1: BTreeMap<_, _> = fold(&effects)
        .into_iter()
        .map(|(c, (t, _))| (c, (t, 0)))
        .collect();
    assert_eq!(after_v1, want_v1, "version 1 keeps no order count");
    host.sigterm();
    host.wait_exit(PATIENCE);

    // Version 2 takes over: new orders are counted, the history is not.
    let mut host = Host::start(&db.url, &["--config", v2.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let (second, more) = orders(13, 4);
    insert_events(&db.pool, &second).await;
    let settled = (first.len() + second.len()) as i64;
    wait_settled(&db.pool, PROJECTION, settled, PATIENCE).await;
    effects.extend(more.iter().cloned());
    let before = totals(&db.pool).await;
    assert_ne!(
        before,
        fold(&effects),
        "the orders version 1 applied are not counted yet"
    );
    // A replay cannot fix it: nothing failed, and every id is in the applied-events table.
    assert_eq!(applied(&db.pool).await, settled);

    // The backfill, beside the running host, while the application keeps writing.
    let (third, last) = orders(17, 3);
    insert_events(&db.pool, &third).await;
    effects.extend(last.iter().cloned());
    let (out, report) = run_rebuild(
        &db.url,
        &v2,
        PROJECTION,
        &["--source", "history", "--zero-downtime"],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report["switched"], json!(true), "{report}");
    assert_eq!(report["rows_failed"], json!(0), "{report}");
    let total = settled + third.len() as i64;
    wait_settled(&db.pool, PROJECTION, total, PATIENCE).await;
    assert_eq!(
        totals(&db.pool).await,
        fold(&effects),
        "every order counted once, by version 2 ({report})"
    );
    assert_eq!(applied(&db.pool).await, total);

    // Events after the switch go to the new model, once.
    let (fourth, tail) = orders(20, 2);
    insert_events(&db.pool, &fourth).await;
    effects.extend(tail.iter().cloned());
    wait_settled(&db.pool, PROJECTION, total + fourth.len() as i64, PATIENCE).await;
    assert_eq!(totals(&db.pool).await, fold(&effects));
}
