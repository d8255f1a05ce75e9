//! `projector bench` at a tiny size: it runs every measurement end to end against a real Postgres
//! and search server, prints its table, writes a well-formed JSON report whose ratios and verdicts
//! follow from its values, and leaves nothing behind on the server. (How fast anything is, is not
//! asserted here: that is what the full run in BENCHMARKS.md is for. What the scale runs count,
//! events lost and duplicated across hosts and the skew they seeded, is.)

use crate::common;

use common::*;
use serde_json::Value;

/// Every row a run with `--sweep-batch-sizes 10,40` reports, in order.
const KEYS: &[&str] = &[
    "raw_sql_ceiling",
    "raw_queue_ceiling",
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
    "skew_uniform_drain",
    "skew_drain",
    "skew_drain_default",
    "sweep_b10_raw_sql",
    "sweep_b10_raw_queue",
    "sweep_b10_noop",
    "sweep_b40_raw_sql",
    "sweep_b40_raw_queue",
    "sweep_b40_noop",
    "long_drain",
    "long_first_tenth",
    "long_last_tenth",
    "one_host_drain",
    "many_hosts_drain",
    "hosts_lost",
    "hosts_duplicated",
    "raw_without_done_rows",
    "raw_with_done_rows",
];

/// Rows of CPU per event, reported only when the drains behind them ran long enough for the
/// clock ticks to measure (at this size they may not): when present, they come where listed.
const CPU_ROWS: &[(&str, &str)] = &[
    ("queue_database_cpu", "noop_drain"),
    ("noop_database_cpu", "queue_database_cpu"),
    ("one_host_cpu", "many_hosts_drain"),
    ("many_hosts_cpu", "one_host_cpu"),
];

/// Rows that count events (lost, duplicated): zero is a measurement there.
const COUNTS: &[&str] = &["hosts_lost", "hosts_duplicated"];

/// Held by every scenario that runs `projector bench` on the shared test cluster, so that the
/// check below that no `projector_bench_*` database or role is left sees no other run's.
pub(crate) static BENCH_RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn plugins_dir() -> String {
    plugin("noop")
        .parent()
        .expect("plugins have a directory")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_run_measures_everything_and_writes_a_consistent_report() {
    let _alone = BENCH_RUNS.lock().await;
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
            "--skew-events",
            "400",
            "--long-events",
            "600",
            "--sweep-batch-sizes",
            "10,40",
            "--sweep-events",
            "200",
            "--multi-host-events",
            "2000",
            "--hosts",
            "3",
            "--multi-host-pairs",
            "2",
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
    assert_eq!(report["format"], "projector-bench/2");
    assert_eq!(report["settings"]["events"], 300);
    assert_eq!(report["settings"]["search_events"], 200);
    assert_eq!(report["settings"]["batch_size"], 50);
    assert_eq!(report["settings"]["done_rows"], 3000);
    assert_eq!(
        report["settings"]["sweep_batch_sizes"],
        serde_json::json!([10, 40])
    );
    assert_eq!(report["settings"]["hosts"], 3);
    assert!(
        report["machine"]["cpus"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    assert!(report["machine"]["postgres"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));

    let results = report["results"].as_array().expect("results is a list");
    let all_keys: Vec<&str> = results.iter().filter_map(|r| r["key"].as_str()).collect();
    for (key, after) in CPU_ROWS {
        if let Some(i) = all_keys.iter().position(|k| k == key) {
            assert_eq!(all_keys.get(i.wrapping_sub(1)), Some(after), "{all_keys:?}");
        }
    }
    let keys: Vec<&str> = all_keys
        .iter()
        .copied()
        .filter(|k| !CPU_ROWS.iter().any(|(cpu, _)| cpu == k))
        .collect();
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
        if COUNTS.contains(&key) {
            assert!(value.is_finite() && value >= 0.0, "{key}: not a count: {r}");
        } else {
            assert!(
                value.is_finite() && value > 0.0,
                "{key}: not a positive measurement: {r}"
            );
        }
        let label = r["label"].as_str().expect("label");
        assert!(
            table.contains(label),
            "the table has no `{label}` row:\n{table}"
        );
        let ratios = r["ratios"].as_object().expect("every row lists its ratios");
        for (of, ratio) in ratios {
            let ratio = ratio.as_f64().expect("a ratio");
            let expected = value / value_of(of);
            assert!(
                (ratio - expected).abs() <= 1e-9 * expected,
                "{key}: ratio to {of} {ratio} != {expected}"
            );
        }
        if let Some(of) = r["compared_to"].as_str() {
            assert!(ratios.contains_key(of), "{key}: {r}");
            let ratio = r["ratio"].as_f64().expect("a compared row has a ratio");
            assert_eq!(Some(ratio), ratios[of].as_f64(), "{key}: {r}");
            match r["target_min_ratio"].as_f64() {
                Some(min) => assert_eq!(r["met"].as_bool(), Some(ratio >= min), "{key}: {r}"),
                None => assert!(r["met"].is_null(), "{key}: no target, no verdict: {r}"),
            }
        } else if let Some(max) = r["target_max"].as_f64() {
            assert!(ratios.is_empty(), "{key}: {r}");
            assert_eq!(r["met"].as_bool(), Some(value <= max), "{key}: {r}");
        } else {
            assert!(
                ratios.is_empty() && r["met"].is_null(),
                "{key}: a row without target has no verdict: {r}"
            );
        }
    }
    // The noop drain is held to the independent ceiling and compared with the host's statements.
    let noop = results
        .iter()
        .find(|r| r["key"] == "noop_drain")
        .expect("row");
    assert_eq!(noop["compared_to"], "raw_queue_ceiling", "{noop}");
    assert!(noop["ratios"]["raw_sql_ceiling"].is_number(), "{noop}");
    // Each sweep drain is compared with its own batch size's two ceilings.
    for b in [10, 40] {
        let row = results
            .iter()
            .find(|r| r["key"] == format!("sweep_b{b}_noop"))
            .expect("row");
        let ratios = row["ratios"].as_object().expect("ratios");
        assert!(
            ratios.contains_key(&format!("sweep_b{b}_raw_queue"))
                && ratios.contains_key(&format!("sweep_b{b}_raw_sql")),
            "{row}"
        );
    }
    // Several hosts drained the same events: none lost, none applied twice, and the per-host
    // tally names only the hosts the run started and adds up to the events. (Which hosts settle
    // how many is not asserted: at this size a loop that finds nothing to claim sleeps until the
    // 1 s poll, and the drain is over by then.)
    assert_eq!(value_of("hosts_lost"), 0.0);
    assert_eq!(value_of("hosts_duplicated"), 0.0);
    let many = results
        .iter()
        .find(|r| r["key"] == "many_hosts_drain")
        .expect("row");
    let note = many["note"]
        .as_str()
        .expect("the many-hosts row names its hosts");
    let tally = note
        .strip_prefix("done per host: ")
        .and_then(|rest| rest.split(';').next())
        .expect("the note starts with the per-host tally");
    let mut settled = 0;
    for entry in tally.split(", ") {
        let (host, count) = entry.rsplit_once(' ').expect("host and count");
        assert!(
            [
                "bench-bench_hosts-0",
                "bench-bench_hosts-1",
                "bench-bench_hosts-2"
            ]
            .contains(&host),
            "a host the run did not start: {note}"
        );
        settled += count.parse::<i64>().expect("a count");
    }
    assert_eq!(settled, 2000, "{note}");
    // Two alternating pairs, each with the rates it measured.
    let pairs = note
        .split("pairs (1 host / 3 hosts, events/s): ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the note lists the pairs");
    assert_eq!(pairs.split(", ").count(), 2, "{note}");
    for pair in pairs.split(", ") {
        let (one, many) = pair
            .split_once(" (")
            .and_then(|(rates, _)| rates.split_once(" / "))
            .expect("1-host and n-host rate");
        assert!(
            one.parse::<f64>().unwrap() > 0.0 && many.parse::<f64>().unwrap() > 0.0,
            "{note}"
        );
    }
    // The skewed stream is skewed: 95 % of its events on its 20 hot aggregates.
    let skew = results
        .iter()
        .find(|r| r["key"] == "skew_drain")
        .expect("row");
    assert!(
        skew["note"]
            .as_str()
            .is_some_and(|n| n.contains("95.0 % of them on the 20 busiest aggregates")),
        "{skew}"
    );
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
