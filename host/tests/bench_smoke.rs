//! `projector bench` at a tiny size: it runs every measurement end to end against a real Postgres
//! and search server, prints its table, writes a well-formed JSON report whose ratios and verdicts
//! follow from its values, and leaves nothing behind on the server. (How fast anything is, is not
//! asserted here: that is what the full run in BENCHMARKS.md is for.)

mod common;

use common::*;
use serde_json::Value;

/// Every row a run reports, in order.
const KEYS: &[&str] = &[
    "raw_sql_ceiling",
    "noop_drain",
    "chronicle_drain",
    "search_bulk_ceiling",
    "search_drain",
    "offered_rate",
    "pickup_p50_ms",
    "pickup_p99_ms",
    "pickup_max_ms",
    "rss_noop_mib",
    "rss_three_mib",
    "plugin_compile_ms",
    "plugin_cached_load_ms",
    "instantiate_ms",
    "call_us_per_event",
    "call_us_single",
    "raw_with_done_rows",
];

fn plugins_dir() -> String {
    plugin("noop")
        .parent()
        .expect("plugins have a directory")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_run_measures_everything_and_writes_a_consistent_report() {
    let db = TestDb::new().await;
    let es = Osmem::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("report.json");
    let out = run_projector(
        &[
            "bench",
            "--events",
            "300",
            "--search-events",
            "200",
            "--batch-size",
            "50",
            "--rate",
            "100",
            "--latency-seconds",
            "1",
            "--done-rows",
            "3000",
            "--plugins-dir",
            &plugins_dir(),
            "--json",
            json_path.to_str().expect("utf-8 path"),
            "--database-url",
            &db.url,
            "--elastic-url",
            &es.url,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "projector bench failed:\n{}",
        output_text(&out)
    );

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path).expect("the JSON report is written"),
    )
    .expect("the report is JSON");
    assert_eq!(report["format"], "projector-bench/1");
    assert_eq!(report["settings"]["events"], 300);
    assert_eq!(report["settings"]["search_events"], 200);
    assert_eq!(report["settings"]["batch_size"], 50);
    assert_eq!(report["settings"]["done_rows"], 3000);
    assert!(
        report["machine"]["cpus"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    assert!(report["machine"]["postgres"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));

    let results = report["results"].as_array().expect("results is a list");
    let keys: Vec<&str> = results.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, KEYS);
    let value_of = |key: &str| -> f64 {
        results.iter().find(|r| r["key"] == key).expect("row")["value"]
            .as_f64()
            .expect("numeric value")
    };
    let table = String::from_utf8_lossy(&out.stdout);
    for r in results {
        let key = r["key"].as_str().unwrap_or_default();
        let value = r["value"].as_f64().unwrap_or(f64::NAN);
        assert!(
            value.is_finite() && value > 0.0,
            "{key}: not a positive measurement: {r}"
        );
        let label = r["label"].as_str().expect("label");
        assert!(
            table.contains(label),
            "the table has no `{label}` row:\n{table}"
        );
        if let Some(of) = r["compared_to"].as_str() {
            let ratio = r["ratio"].as_f64().expect("a compared row has a ratio");
            let expected = value / value_of(of);
            assert!(
                (ratio - expected).abs() <= 1e-9 * expected,
                "{key}: ratio {ratio} != {expected}"
            );
            let min = r["target_min_ratio"].as_f64().expect("its target");
            assert_eq!(r["met"].as_bool(), Some(ratio >= min), "{key}: {r}");
        } else if let Some(max) = r["target_max"].as_f64() {
            assert_eq!(r["met"].as_bool(), Some(value <= max), "{key}: {r}");
        } else {
            assert!(
                r["met"].is_null(),
                "{key}: a row without target has no verdict: {r}"
            );
        }
    }
    // The pickup run offers its events at the requested rate (within what a loaded machine keeps).
    let offered = value_of("offered_rate");
    assert!(
        (50.0..=150.0).contains(&offered),
        "offered {offered} ev/s for 100 asked"
    );
    assert!(value_of("pickup_p50_ms") <= value_of("pickup_p99_ms"));
    assert!(value_of("pickup_p99_ms") <= value_of("pickup_max_ms"));

    // Its database (and the role its sql projection ran as) is gone; the given one is untouched.
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'projector_bench_%'
         UNION ALL SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'projector_bench_%'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("list databases and roles");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        db.public_tables().await.is_empty(),
        "the DATABASE_URL database was touched"
    );
}

#[test]
fn usage_errors_name_what_to_fix_and_exit_2() {
    let dir = plugins_dir();
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--events", "0"], "--events"),
        (
            &[
                "bench",
                "--plugins-dir",
                &dir,
                "--elastic-url",
                "http://127.0.0.1:9",
            ],
            "DATABASE_URL",
        ),
        (
            &[
                "bench",
                "--plugins-dir",
                &dir,
                "--database-url",
                "postgres://x@127.0.0.1/x",
            ],
            "ELASTIC_URL",
        ),
        (
            &[
                "bench",
                "--plugins-dir",
                "/nonexistent",
                "--database-url",
                "postgres://x@127.0.0.1/x",
                "--elastic-url",
                "http://127.0.0.1:9",
            ],
            "--plugins-dir",
        ),
    ];
    for (args, names) in cases {
        let out = run_projector(args, &[("DATABASE_URL", ""), ("ELASTIC_URL", "")]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}:\n{}",
            output_text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(names),
            "{args:?}: stderr does not name {names}:\n{stderr}"
        );
    }
}
