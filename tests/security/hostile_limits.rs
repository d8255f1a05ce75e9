//! Hostile plugins against the host's own limits (issue 12, items 3 and 4): a plugin may answer
//! huge failure messages, flood the log, invent a new failure reason per event, or be a
//! hand-built component whose memories and tables together exceed its `memory_limit_mib`. Each
//! scenario runs a real `projector run` on real Postgres and shows containment: what the host
//! stores and logs is bounded, metrics stay bounded, the hostile event ends with a clear reason,
//! and a well-behaved `steady` projection beside it keeps delivering.
//!
//! The limits under test are the host's (host/runtime/src/limits.rs): failure messages and log
//! lines are cut to 4096 bytes plus a `… [truncated, N bytes]` marker, plugin logging is 100
//! lines/s with bursts of 500 per projection, at most 32 distinct plugin reasons per projection
//! become metric labels (the rest `other`), and one memory budget covers all of an instance's
//! memories and tables (16 bytes per table element).

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The host's limits, as documented (the tests check the host keeps them).
const TEXT_LIMIT: usize = 4096;
const LOG_LINES_PER_SECOND: f64 = 100.0;
const LOG_BURST: f64 = 500.0;
const MAX_REASON_LABELS: usize = 32;

/// Room for the truncation marker `… [truncated, N bytes]`.
const MARKER_ROOM: usize = 64;

/// A config with the hostile projection `name` (plugin file `plugin_path`, `extra` keys) and a
/// well-behaved `steady` one (noop) beside it.
fn config(dir: &Path, name: &str, plugin_path: &Path, extra: &str) -> PathBuf {
    write_file(
        dir,
        "hostile.toml",
        format!(
            "[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\n{extra}\n\
             [[projection]]\nname = \"steady\"\nplugin = \"{}\"\n",
            plugin_path.display(),
            plugin("noop").display()
        ),
    )
}

async fn insert_steady(db: &TestDb, n: usize) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("steady", format!("ok-{i}"), json!({})))
        .collect();
    insert_events(&db.pool, &events).await;
}

fn is_plugin_record(r: &Value, projection: &str) -> bool {
    field_str(r, "target").as_deref() == Some("plugin")
        && field_str(r, "projection").as_deref() == Some(projection)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_twenty_mib_failure_message_is_stored_and_logged_truncated() {
    let db = TestDb::new().await;
    db.migrate();
    let huge = 20 << 20;
    let ids = insert_events(
        &db.pool,
        &[NewEvent::new(
            "flood",
            "huge-message",
            json!({"outcome": "transient", "reason": "flood_message", "message_bytes": huge}),
        )],
    )
    .await;
    insert_steady(&db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "flood", &plugin("flood"), "max_attempts = 2");
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);

    let counts = wait_settled(&db.pool, "flood", 1, PATIENCE).await;
    assert_eq!(counts.failed, 1, "{counts:?}");
    let row = &events(&db.pool, "flood").await[0];
    assert_eq!(row.id, ids[0]);
    assert_eq!(
        row.error_reason.as_deref(),
        Some("flood_message"),
        "{row:?}"
    );
    assert_eq!(row.failure_kind.as_deref(), Some("attempts_exhausted"));
    let stored = row.error.as_deref().unwrap_or_default();
    let marker = format!("[truncated, {huge} bytes]");
    assert!(
        stored.len() <= TEXT_LIMIT + MARKER_ROOM && stored.ends_with(&marker),
        "stored error is {} bytes, ending {:?}",
        stored.len(),
        &stored[stored.len().saturating_sub(80)..]
    );
    assert_eq!(
        wait_settled(&db.pool, "steady", 100, PATIENCE).await.done,
        100
    );

    // Every record about the event (the retry, the terminal failure) carries the bounded text.
    let records = host.log_lines();
    let about: Vec<&Value> = records
        .iter()
        .filter(|r| field_str(r, "event_id").as_deref() == Some(&ids[0].to_string()))
        .filter(|r| field(r, "error").is_some())
        .collect();
    assert!(
        about.len() >= 2,
        "expected the retry and the terminal failure to be logged, found {}",
        about.len()
    );
    let longest_error = about
        .iter()
        .map(|r| field_str(r, "error").unwrap_or_default().len())
        .max()
        .unwrap_or(0);
    assert!(
        longest_error <= TEXT_LIMIT + MARKER_ROOM,
        "a logged error is {longest_error} bytes"
    );
    let log = host.log_text();
    let longest_line = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest_line <= 4 * TEXT_LIMIT,
        "the longest log line is {longest_line} bytes"
    );
    println!(
        "20 MiB failure message: stored {} bytes, longest logged error {longest_error} bytes, \
         longest log line {longest_line} bytes, whole log {} bytes",
        stored.len(),
        log.len()
    );
    assert!(host.is_ready());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_flooding_its_log_is_rate_limited_counted_and_others_keep_flowing() {
    let db = TestDb::new().await;
    db.migrate();
    // 30,000 lines of 4,200 bytes: 126 MB asked for, as fast as the plugin can.
    let (lines, line_bytes) = (30_000u64, 4_200usize);
    let ids = insert_events(
        &db.pool,
        &[NewEvent::new(
            "flood",
            "loud",
            json!({"log_lines": lines, "log_bytes": line_bytes}),
        )],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "flood", &plugin("flood"), "");
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    insert_steady(&db, 200).await;

    let counts = wait_settled(&db.pool, "flood", 1, PATIENCE).await;
    // Everything the plugin logged happened within the host's life so far.
    let ran_for = host.started_at.elapsed().as_secs_f64();
    assert_eq!(
        counts.done, 1,
        "the flooding event itself succeeds: {counts:?}"
    );
    assert_eq!(
        wait_settled(&db.pool, "steady", 200, PATIENCE).await.done,
        200
    );

    let records = host.log_lines();
    let emitted: Vec<&Value> = records
        .iter()
        .filter(|r| is_plugin_record(r, "flood"))
        .collect();
    let emitted_bytes: usize = emitted
        .iter()
        .map(|r| field_str(r, "message").unwrap_or_default().len())
        .sum();
    let longest = emitted
        .iter()
        .map(|r| field_str(r, "message").unwrap_or_default().len())
        .max()
        .unwrap_or(0);
    // The bucket allows its burst plus the rate over the time the host ran.
    let allowed = LOG_BURST + LOG_LINES_PER_SECOND * ran_for;
    println!(
        "log flood: {lines} lines of {line_bytes} bytes asked for; {} emitted ({emitted_bytes} \
         bytes, longest {longest}) by the time the event was done, {ran_for:.1} s after the \
         host started (the rate limit allows {allowed:.0})",
        emitted.len()
    );
    assert!(
        (emitted.len() as f64) <= allowed,
        "{} plugin lines emitted, the rate limit allows {allowed:.0}",
        emitted.len()
    );
    assert!(
        longest <= TEXT_LIMIT + MARKER_ROOM,
        "a plugin line of {longest} bytes"
    );
    let dropped = host
        .metric(
            "projector_plugin_log_dropped_total",
            &[("projection", "flood")],
        )
        .expect("projector_plugin_log_dropped_total{projection=\"flood\"} is exported");
    // The host reports the drops in a few records (within its 5 s report interval), never one
    // per line.
    let drop_reports = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|r| {
                field_str(r, "message").as_deref() == Some("plugin log lines dropped (rate limit)")
                    && field_str(r, "projection").as_deref() == Some("flood")
            })
            .cloned()
            .collect()
    };
    let waiting = Instant::now();
    while drop_reports(&host.log_lines())
        .iter()
        .filter_map(|r| field_f64(r, "dropped"))
        .sum::<f64>()
        < dropped
        && waiting.elapsed() < PATIENCE
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let reports = drop_reports(&host.log_lines());
    let reported: f64 = reports.iter().filter_map(|r| field_f64(r, "dropped")).sum();
    let elapsed = host.started_at.elapsed().as_secs_f64();
    println!(
        "log flood: {dropped} dropped (metric), {} drop reports covering {reported} lines, \
         complete {elapsed:.1} s after the host started",
        reports.len()
    );
    assert!(dropped > 0.0);
    assert_eq!(
        dropped as u64 + emitted.len() as u64,
        lines,
        "every line is either emitted or counted as dropped"
    );
    assert!(
        !reports.is_empty() && reports.len() as f64 <= 1.0 + elapsed / 5.0,
        "{} drop reports (at most one per 5 s expected)",
        reports.len()
    );
    assert_eq!(
        reported, dropped,
        "the drop reports account for every dropped line"
    );
    assert!(
        records
            .iter()
            .any(|r| field_str(r, "event_id").as_deref() == Some(&ids[0].to_string())),
        "the emitted lines name their event"
    );
    assert!(host.is_ready());
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_reasons_make_a_bounded_number_of_metric_series() {
    let db = TestDb::new().await;
    db.migrate();
    let events_in: Vec<NewEvent> = (0..300)
        .map(|i| {
            NewEvent::new(
                "flood",
                format!("agg-{i}"),
                json!({"outcome": "deterministic", "reason": format!("reason_{i:03}")}),
            )
        })
        .collect();
    insert_events(&db.pool, &events_in).await;
    insert_steady(&db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "flood", &plugin("flood"), "");
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);

    let counts = wait_settled(&db.pool, "flood", 300, PATIENCE).await;
    assert_eq!(counts.failed, 300, "{counts:?}");
    assert_eq!(
        wait_settled(&db.pool, "steady", 100, PATIENCE).await.done,
        100
    );
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT error_reason FROM outbox_events WHERE projection = 'flood' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();

    // The counters move when the batch settles; wait until all 300 are counted.
    let name = "outbox_terminal_failed_total";
    wait_until("all 300 failures are counted", PATIENCE, async || {
        host.metric_sum(name, &[("projection", "flood")]) >= 300.0
    })
    .await;
    let series: Vec<Sample> = parse_metrics(&host.metrics())
        .into_iter()
        .filter(|s| s.name == name && s.has_labels(&[("projection", "flood")]))
        .collect();
    let total: f64 = series.iter().map(|s| s.value).sum();
    let other = series
        .iter()
        .find(|s| s.has_labels(&[("reason", "other")]))
        .map(|s| s.value)
        .unwrap_or(0.0);
    println!(
        "300 reasons: {} distinct error_reason stored, {} `{name}` series for the projection \
         counting {total} failures ({other} under `other`)",
        stored.len(),
        series.len()
    );
    assert_eq!(stored.len(), 300, "error_reason keeps every real reason");
    assert!(stored.iter().all(|r| r.starts_with("reason_")));
    assert!(
        series.len() <= MAX_REASON_LABELS + 1,
        "{} series (at most {} reasons + other expected)",
        series.len(),
        MAX_REASON_LABELS
    );
    assert_eq!(total, 300.0);
    assert_eq!(other, 300.0 - (series.len() - 1) as f64);
}

// ---------------------------------------------------------------------------------------------
// Hand-built components: what a Rust guest cannot produce (several memories, table growth).

/// A component of the `plugin` world made from a WAT core module that answers `describe()` and
/// `success` for every event, after running `hostile` (WAT instructions) in `handle`.
/// `memories` declares the module's memories (the first one, `$m0`, exported as `memory`);
/// `table` its table.
fn walled_component(memories: &str, table: &str, hostile: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  {memories}
  {table}
  (global $heap (mut i32) (i32.const 1024))
  (data (memory $m0) (i32.const 16) "walled")
  (data (memory $m0) (i32.const 32) "0.1.0")
  (data (memory $m0) (i32.const 48) "*")
  (data (memory $m0) (i32.const 64) "\30\00\00\00\01\00\00\00")
  (data (memory $m0) (i32.const 80)
    "\10\00\00\00\06\00\00\00\20\00\00\00\05\00\00\00\40\00\00\00\01\00\00\00")
  (func $realloc (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
      (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $ok
      (loop $more
        (br_if $ok (i32.le_u (global.get $heap) (i32.shl (memory.size $m0) (i32.const 16))))
        (if (i32.eq (memory.grow $m0 (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $more)))
    (local.get $p))
  (func (export "projector:plugin/projection@0.1.0#describe") (result i32)
    (i32.const 80))
  (func (export "projector:plugin/projection@0.1.0#handle")
    (param $events i32) (param $len i32) (result i32)
    (local $out i32) (local $ret i32) (local $base i32)
    {hostile}
    (local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
      (i32.mul (local.get $len) (i32.const 20))))
    (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 8)))
    (i32.store (local.get $ret) (local.get $out))
    (i32.store offset=4 (local.get $ret) (local.get $len))
    (local.get $ret))
)"#
    );
    let mut module = wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(repo_root().join("wit"))
        .expect("parse wit/");
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .expect("the plugin world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed the world");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("a core module of the plugin world")
        .validate(true)
        .encode()
        .expect("encode the component")
}

/// Grows memory `$mem` by `pages` and writes every new byte (so it is really resident); traps
/// when the growth is refused.
fn grow_and_touch(mem: &str, pages: u32) -> String {
    format!(
        "(local.set $base (memory.grow {mem} (i32.const {pages})))
    (if (i32.eq (local.get $base) (i32.const -1)) (then unreachable))
    (memory.fill {mem} (i32.shl (local.get $base) (i32.const 16)) (i32.const 0)
      (i32.const {bytes}))",
        bytes = pages << 16
    )
}

const ONE_MEMORY: &str = r#"(memory $m0 (export "memory") 1)"#;
const SMALL_TABLE: &str = "(table $t 1 funcref)";

#[tokio::test(flavor = "multi_thread")]
async fn memories_and_tables_share_one_budget_and_host_memory_stays_bounded() {
    let db = TestDb::new().await;
    db.migrate();
    // 40 MiB of linear memory (within the 64 MiB cap on its own), then 50M table elements:
    // 400 MB of host memory at wasmtime's 8 bytes each, charged 800 MB by the budget.
    let hostile = format!(
        "{}
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 50000000)) (i32.const -1))
      (then unreachable))",
        grow_and_touch("$m0", 640)
    );
    let dir = tempfile::tempdir().unwrap();
    let component = write_file(
        dir.path(),
        "walled.wasm",
        walled_component(ONE_MEMORY, SMALL_TABLE, &hostile),
    );
    insert_events(&db.pool, &[NewEvent::new("walled", "greedy", json!({}))]).await;
    let cfg = config(
        dir.path(),
        "walled",
        &component,
        "max_attempts = 1\nmemory_limit_mib = 64",
    );
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let baseline = peak_rss_mib(host.pid());
    insert_steady(&db, 100).await;

    let counts = wait_settled(&db.pool, "walled", 1, PATIENCE).await;
    let peak = peak_rss_mib(host.pid());
    let grew = (peak - baseline).max(0.0);
    let row = &events(&db.pool, "walled").await[0];
    println!(
        "memory + table: event {} ({:?}: {:?}); host peak RSS {baseline:.0} MiB after loading, \
         {peak:.0} MiB after the event (+{grew:.0} MiB)",
        row.status, row.error_reason, row.error,
    );
    assert_eq!(counts.failed, 1, "{row:?}");
    assert_eq!(row.error_reason.as_deref(), Some("plugin_oom"), "{row:?}");
    let error = row.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("64 MiB") && error.contains("table"),
        "the message names the cap and what was refused: {error}"
    );
    // The plugin may use its 64 MiB; the host grows by little more than that.
    assert!(grew < 128.0, "host peak RSS grew by {grew:.0} MiB");
    assert_eq!(
        wait_settled(&db.pool, "steady", 100, PATIENCE).await.done,
        100
    );
    assert!(host.is_ready());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_beyond_its_budget_or_with_several_memories_is_refused_at_load() {
    let db = TestDb::new().await;
    db.migrate();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            // Two memories of 40 and 48 MiB: each under the 64 MiB cap, 88 MiB together.
            "two memories",
            walled_component(
                &format!(r#"{ONE_MEMORY} (memory $m1 1)"#),
                SMALL_TABLE,
                &format!(
                    "{}\n{}",
                    grow_and_touch("$m1", 768),
                    grow_and_touch("$m0", 640)
                ),
            ),
            "memor",
        ),
        (
            // A table whose initial 5M elements alone are charged 80 MB.
            "a huge initial table",
            walled_component(ONE_MEMORY, "(table $t 5000000 funcref)", ""),
            "exceeds",
        ),
        (
            // 40 MiB of initial memory plus a 2M-element table (32 MB charged).
            "memory and table together",
            walled_component(
                r#"(memory $m0 (export "memory") 640)"#,
                "(table $t 2000000 funcref)",
                "",
            ),
            "exceeds",
        ),
    ];
    let mut outcomes = Vec::new();
    for (what, bytes, names) in cases {
        let component = write_file(
            dir.path(),
            format!("{}.wasm", what.replace(' ', "-")),
            bytes,
        );
        insert_events(&db.pool, &[NewEvent::new("walled", what, json!({}))]).await;
        let cfg = config(dir.path(), "walled", &component, "memory_limit_mib = 64");
        let out = run_projector(
            &["run", "--config", cfg.to_str().unwrap()],
            &[
                ("DATABASE_URL", db.url.as_str()),
                ("OUTBOX_HTTP_HOST", "127.0.0.1"),
                ("OUTBOX_HTTP_PORT", &free_port().to_string()),
                ("OUTBOX_RUN_SECONDS", "3"),
                ("OUTBOX_POLL_INTERVAL_SECONDS", "0.2"),
            ],
        );
        let text = output_text(&out);
        let message = text
            .lines()
            .find(|l| l.contains(&format!("plugin {}:", component.display())))
            .unwrap_or("")
            .to_owned();
        let delivered = events(&db.pool, "walled")
            .await
            .iter()
            .filter(|r| r.aggregate_id == what && r.status != "pending")
            .count();
        println!(
            "{what}: exit {:?}, {delivered} event delivered: {message}",
            out.status.code()
        );
        outcomes.push((
            what,
            out.status.code(),
            message.contains(names),
            delivered,
            text,
        ));
    }
    // Every case is tried before any assertion, so a failure shows all of them.
    for (what, code, named, delivered, text) in outcomes {
        assert_eq!(code, Some(2), "{what}: {text}");
        assert!(named, "{what}: the refusal names its cause: {text}");
        assert_eq!(delivered, 0, "{what}: its event was delivered");
    }
}
