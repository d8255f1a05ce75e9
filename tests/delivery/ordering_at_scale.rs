//! Ordering at scale (issue 13): per-aggregate order stays strict with several hosts, a skewed
//! stream and injected failures, both with one event per aggregate per batch (the default) and
//! with runs of consecutive events (`events_per_aggregate`); a failed event blocks its aggregate,
//! and only its aggregate, until an operator skips or replays it; a transient failure inside a run
//! holds back the rest of the run without charging it an attempt.
//!
//! The oracle is the recorder in `common/order_log.rs`: triggers in the test database that log
//! every claim and every settle to `done` as they commit, not the host's own bookkeeping. The last
//! scenario shows it catching a later event delivered before an earlier one.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A config running projection `name` on `scripted`, two loops per host. `runs` sets
/// `events_per_aggregate`; `None` leaves the key out, so the default (one event per aggregate per
/// batch) applies. `extra` goes at the end of the projection's table (more keys, then
/// `[projection.config]`).
fn config(dir: &Path, file: &str, name: &str, runs: Option<u32>, extra: &str) -> PathBuf {
    let runs = runs
        .map(|n| format!("events_per_aggregate = {n}\n"))
        .unwrap_or_default();
    write_file(
        dir,
        file,
        format!(
            "batch_size = 50\nconcurrency = 2\n\n[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\n{runs}{extra}",
            plugin("scripted").display()
        ),
    )
}

/// One host per worker id, all on `config`, ready.
fn start_hosts(db: &TestDb, config: &Path, workers: &[&str], env: &[(&str, &str)]) -> Vec<Host> {
    let mut hosts: Vec<Host> = workers
        .iter()
        .map(|worker| {
            let mut env = env.to_vec();
            env.push(("OUTBOX_WORKER_ID", worker));
            Host::start(&db.url, &["--config", config.to_str().unwrap()], &env)
        })
        .collect();
    for host in &mut hosts {
        host.wait_ready(PATIENCE);
    }
    hosts
}

/// `projector <command>` (split at spaces) against `db`, asserting success; its JSON answer.
fn operator(db: &TestDb, command: &str) -> Value {
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = run_projector(&args, &[("DATABASE_URL", db.url.as_str())]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A small deterministic generator (a 64-bit LCG), so the stream is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The skewed stream: `total` events of `projection`, about 92 % of them on 20 hot aggregates and
/// the rest spread over 200 cold ones; about one in twelve fails transiently once or twice before it
/// succeeds. Returns the events and the attempts each one should end with.
fn skewed_stream(projection: &str, total: usize) -> (Vec<NewEvent>, Vec<i32>) {
    let mut rng = Lcg(13);
    let mut stream = Vec::with_capacity(total);
    let mut attempts = Vec::with_capacity(total);
    let mut cold = 0;
    for _ in 0..total {
        let aggregate = if rng.below(100) < 92 {
            format!("hot-{}", rng.below(20))
        } else {
            cold += 1;
            format!("cold-{}", cold % 200)
        };
        let payload = if rng.below(12) == 0 {
            let fail_times = 1 + rng.below(2);
            attempts.push(fail_times as i32 + 1);
            json!({"outcome": "transient_then_success", "fail_times": fail_times})
        } else {
            attempts.push(1);
            json!({"outcome": "success"})
        };
        stream.push(NewEvent::new(projection, aggregate, payload));
    }
    (stream, attempts)
}

/// The rows of `aggregate`, in seq order.
fn of<'a>(rows: &'a [EventRow], aggregate: &str) -> Vec<&'a EventRow> {
    rows.iter()
        .filter(|r| r.aggregate_id == aggregate)
        .collect()
}

fn assert_in_order(log: &OrderLog, rows: &[EventRow]) {
    let violations = log.violations(rows);
    assert!(
        violations.is_empty(),
        "{}",
        describe_violations(&violations)
    );
}

/// 3 hosts x 2 loops drain 3,000 events, 92 % of them on 20 aggregates, arriving in ten inserts
/// while the hosts run, some failing transiently first. The application's inserts go through
/// while the hosts settle (an insert that fails, a deadlock say, fails the scenario). Every event
/// ends done, charged exactly its own attempts, settled once, and each aggregate's events became
/// done in seq order.
async fn skewed_stream_on_three_hosts(runs: Option<u32>) {
    let db = TestDb::new().await;
    db.migrate();
    record_delivery_order(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "skew.toml", "skew", runs, "");
    let workers = ["host-a", "host-b", "host-c"];
    let _hosts = start_hosts(&db, &config, &workers, &[]);

    let (stream, expected_attempts) = skewed_stream("skew", 3_000);
    let mut per_aggregate: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &stream {
        *per_aggregate.entry(&event.aggregate_id).or_default() += 1;
    }
    let mut sizes: Vec<usize> = per_aggregate.values().copied().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let on_top_20: usize = sizes.iter().take(20).sum();
    assert!(
        on_top_20 * 10 >= stream.len() * 9 && per_aggregate.len() > 200,
        "the stream is skewed: {on_top_20} of {} events on 20 of {} aggregates",
        stream.len(),
        per_aggregate.len()
    );
    for chunk in stream.chunks(300) {
        insert_events(&db.pool, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let total = stream.len() as i64;
    let counts = wait_settled(&db.pool, "skew", total, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: total,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "skew").await;
    let miscounted: Vec<String> = rows
        .iter()
        .zip(&expected_attempts)
        .filter(|(row, expected)| row.attempts != **expected)
        .map(|(row, expected)| {
            format!(
                "seq {} ({}): {} attempts, expected {expected}",
                row.seq, row.aggregate_id, row.attempts
            )
        })
        .collect();
    assert!(
        miscounted.is_empty(),
        "{} events charged the wrong number of attempts: {:?}",
        miscounted.len(),
        &miscounted[..miscounted.len().min(10)]
    );
    let log = delivery_order(&db.pool, "skew").await;
    assert_in_order(&log, &rows);
    assert_eq!(
        log.workers(),
        BTreeSet::from(workers),
        "every host claimed events"
    );
    let largest_run = log.largest_run();
    match runs {
        None => assert_eq!(
            largest_run, 1,
            "by default a batch holds at most one event per aggregate"
        ),
        Some(n) => assert!(
            largest_run > 1 && largest_run <= n as usize,
            "with events_per_aggregate = {n}, batches hold runs of up to {n} events of one \
             aggregate: the largest held {largest_run}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_stream_on_three_hosts_is_delivered_in_order_one_event_per_aggregate_per_batch() {
    skewed_stream_on_three_hosts(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_stream_on_three_hosts_is_delivered_in_order_in_runs_of_up_to_25() {
    skewed_stream_on_three_hosts(Some(25)).await;
}

/// Two aggregates get a poisoned event in the middle: `hot-0`, one of five hot aggregates of 60
/// events, at its 32nd (bad for good: skipped by an operator), and `stuck`, three events written
/// first, at its second (failing on a missing config value: replayed after the fix). 100 cold
/// aggregates of two events drain alongside.
async fn poisoned_aggregates_stay_blocked(runs: Option<u32>) {
    let db = TestDb::new().await;
    db.migrate();
    record_delivery_order(&db.pool).await;
    let mut stream = vec![
        NewEvent::new("p", "stuck", json!({"outcome": "success"})),
        NewEvent::new("p", "stuck", json!({"outcome": "from_config"})),
        NewEvent::new("p", "stuck", json!({"outcome": "success"})),
    ];
    for i in 0..60 {
        for h in 0..5 {
            let payload = if h == 0 && i == 31 {
                json!({"outcome": "deterministic", "reason": "bad_payload"})
            } else {
                json!({"outcome": "success"})
            };
            stream.push(NewEvent::new("p", format!("hot-{h}"), payload));
        }
    }
    for _ in 0..2 {
        for c in 0..100 {
            stream.push(NewEvent::new(
                "p",
                format!("cold-{c}"),
                json!({"outcome": "success"}),
            ));
        }
    }
    insert_events(&db.pool, &stream).await;
    let rows = events(&db.pool, "p").await;
    let poison_stuck = of(&rows, "stuck")[1].clone();
    let poison_hot = of(&rows, "hot-0")[31].clone();
    let is_tail = |r: &EventRow| {
        (r.aggregate_id == "stuck" && r.seq > poison_stuck.seq)
            || (r.aggregate_id == "hot-0" && r.seq > poison_hot.seq)
    };
    let tails = |rows: &[EventRow]| -> Vec<EventRow> {
        rows.iter().filter(|r| is_tail(r)).cloned().collect()
    };
    // Waits until `total` rows are there and every one outside the tails is done or failed (not
    // for the tails, so a host that lets them through fails an assertion rather than a timeout).
    let settled_outside_tails = async |what: &str, total: i64| {
        wait_until(what, PATIENCE, async || {
            let rows = events(&db.pool, "p").await;
            rows.len() as i64 == total
                && rows
                    .iter()
                    .filter(|r| !is_tail(r))
                    .all(|r| r.status == "done" || r.status == "failed")
        })
        .await;
    };
    let blocked = tails(&rows).len() as i64;

    let dir = tempfile::tempdir().unwrap();
    let broken = config(dir.path(), "broken.toml", "p", runs, "");
    let hosts = start_hosts(&db, &broken, &["host-a", "host-b"], &[]);
    let total = stream.len() as i64;
    settled_outside_tails(
        "everything but the poisoned aggregates' tails is settled",
        total,
    )
    .await;

    let rows = events(&db.pool, "p").await;
    let log = delivery_order(&db.pool, "p").await;
    for (poison, reason) in [(&poison_stuck, "bad_config"), (&poison_hot, "bad_payload")] {
        let row = rows.iter().find(|r| r.seq == poison.seq).unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.failure_kind.as_deref(),
                row.error_reason.as_deref()
            ),
            ("failed", Some("deterministic"), Some(reason)),
            "{} seq {}",
            row.aggregate_id,
            row.seq
        );
    }
    let mut handed_back = 0;
    for tail in tails(&rows) {
        assert_eq!(
            (tail.status.as_str(), tail.attempts),
            ("pending", 0),
            "{} seq {} waits behind the failed event, never charged",
            tail.aggregate_id,
            tail.seq
        );
        assert!(
            log.done_of(tail.seq).is_none(),
            "seq {} became done behind a failed event",
            tail.seq
        );
        let claims = log.claims_of(tail.seq);
        match runs {
            None => assert!(
                claims.is_empty(),
                "{} seq {} was claimed behind a failed event: {claims:?}",
                tail.aggregate_id,
                tail.seq
            ),
            Some(_) => {
                // Only in the batch its aggregate failed in (a run past the failing event).
                let poison = if tail.aggregate_id == "stuck" {
                    &poison_stuck
                } else {
                    &poison_hot
                };
                let failing_batch = log.claims_of(poison.seq).last().map(|c| c.claim_batch_id);
                for claim in &claims {
                    assert_eq!(
                        Some(claim.claim_batch_id),
                        failing_batch,
                        "{} seq {} claimed outside the batch its predecessor failed in",
                        tail.aggregate_id,
                        tail.seq
                    );
                }
                handed_back += usize::from(!claims.is_empty());
            }
        }
    }
    assert_eq!(
        status_counts(&db.pool, "p").await,
        StatusCounts {
            pending: blocked,
            done: total - 2 - blocked,
            failed: 2,
            ..StatusCounts::default()
        }
    );
    if let Some(n) = runs {
        assert!(
            handed_back > 0,
            "with events_per_aggregate = {n} neither failure landed inside a run, so nothing was \
             handed back and the scenario proved nothing"
        );
    }
    assert_in_order(&log, &rows);
    wait_until("the blocked events are counted", PATIENCE, async || {
        hosts[0].metric("outbox_blocked_events", &[("projection", "p")]) == Some(blocked as f64)
    })
    .await;

    // More events arrive, also for both blocked aggregates: the rest is delivered, the blocked
    // ones are not touched, also after a further second (five polls, two reclaim sweeps).
    let claims_before = log.claims.len();
    let mut more = vec![NewEvent::new("p", "stuck", json!({"outcome": "success"}))];
    for h in 0..5 {
        for _ in 0..5 {
            more.push(NewEvent::new(
                "p",
                format!("hot-{h}"),
                json!({"outcome": "success"}),
            ));
        }
    }
    for f in 0..10 {
        more.push(NewEvent::new(
            "p",
            format!("fresh-{f}"),
            json!({"outcome": "success"}),
        ));
    }
    insert_events(&db.pool, &more).await;
    let blocked = blocked + 6;
    let total = total + more.len() as i64;
    settled_outside_tails("the new events of free aggregates are done", total).await;
    tokio::time::sleep(secs(1)).await;
    let counts = status_counts(&db.pool, "p").await;
    assert_eq!(
        counts,
        StatusCounts {
            pending: blocked,
            done: total - 2 - blocked,
            failed: 2,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "p").await;
    for tail in tails(&rows) {
        assert_eq!(
            (tail.status.as_str(), tail.attempts),
            ("pending", 0),
            "{} seq {} still waits after more events and another second",
            tail.aggregate_id,
            tail.seq
        );
    }
    let log = delivery_order(&db.pool, "p").await;
    let blocked_seqs: BTreeSet<i64> = tails(&rows).iter().map(|r| r.seq).collect();
    let late_claims: Vec<_> = log.claims[claims_before..]
        .iter()
        .filter(|c| {
            blocked_seqs.contains(&c.seq) || c.seq == poison_stuck.seq || c.seq == poison_hot.seq
        })
        .collect();
    assert!(
        late_claims.is_empty(),
        "blocked aggregates were claimed again: {late_claims:?}"
    );
    assert_in_order(&log, &rows);
    wait_until("the new blocked events are counted", PATIENCE, async || {
        hosts[0].metric("outbox_blocked_events", &[("projection", "p")]) == Some(blocked as f64)
    })
    .await;

    // The operator skips the bad event: hot-0 drains in order while the hosts run; `stuck` stays.
    let skipped = operator(
        &db,
        &format!(
            "skip --projection p --ids {} --by ops --reason poison",
            poison_hot.id
        ),
    );
    assert_eq!(skipped["event_ids"], json!([poison_hot.id.to_string()]));
    wait_until("hot-0 drains after the skip", PATIENCE, async || {
        let rows = events(&db.pool, "p").await;
        of(&rows, "hot-0")
            .iter()
            .all(|r| r.status == "done" || r.seq == poison_hot.seq)
    })
    .await;
    let rows = events(&db.pool, "p").await;
    for tail in of(&rows, "stuck")
        .iter()
        .filter(|r| r.seq > poison_stuck.seq)
    {
        assert_eq!(
            (tail.status.as_str(), tail.attempts),
            ("pending", 0),
            "skipping hot-0's event does not unblock `stuck`"
        );
    }
    assert_in_order(&delivery_order(&db.pool, "p").await, &rows);

    // The config is fixed (the hosts restart with it) and the failed event replayed: `stuck`
    // drains in order.
    for mut host in hosts {
        host.sigterm();
        host.wait_exit(secs(30));
    }
    let replayed = operator(
        &db,
        "replay --projection p --error-reason bad_config --by ops --reason fixed",
    );
    assert_eq!(replayed["event_ids"], json!([poison_stuck.id.to_string()]));
    let fixed = config(
        dir.path(),
        "fixed.toml",
        "p",
        runs,
        "[projection.config]\noutcome = \"success\"\n",
    );
    let hosts = start_hosts(&db, &fixed, &["host-c"], &[]);
    let counts = wait_settled(&db.pool, "p", total, PATIENCE).await;
    assert_eq!(
        counts,
        StatusCounts {
            done: total - 1,
            skipped: 1,
            ..StatusCounts::default()
        }
    );
    let rows = events(&db.pool, "p").await;
    let log = delivery_order(&db.pool, "p").await;
    assert_in_order(&log, &rows);
    let stuck = of(&rows, "stuck");
    assert!(
        stuck.iter().all(|r| r.attempts == 1),
        "the replayed event starts over and the ones behind it were never charged: {:?}",
        stuck
            .iter()
            .map(|r| (r.seq, r.attempts))
            .collect::<Vec<_>>()
    );
    wait_until("nothing is blocked any more", PATIENCE, async || {
        hosts[0].metric("outbox_blocked_events", &[("projection", "p")]) == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_event_blocks_only_its_aggregate_until_skipped_or_replayed() {
    poisoned_aggregates_stay_blocked(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_event_inside_a_run_hands_the_rest_of_the_run_back_and_blocks_it() {
    poisoned_aggregates_stay_blocked(Some(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_inside_a_run_holds_back_the_rest_of_the_run_without_charging_it() {
    let db = TestDb::new().await;
    db.migrate();
    record_delivery_order(&db.pool).await;
    // Aggregate `a`: its second event fails twice before it succeeds; `b` has only successes.
    // Every event logs when the plugin handles it, with its batch.
    let mut stream = Vec::new();
    for i in 0..8 {
        let payload = if i == 1 {
            json!({"outcome": "transient_then_success", "fail_times": 2, "log": true})
        } else {
            json!({"outcome": "success", "log": true})
        };
        stream.push(NewEvent::new("r", "a", payload));
        stream.push(NewEvent::new(
            "r",
            "b",
            json!({"outcome": "success", "log": true}),
        ));
    }
    insert_events(&db.pool, &stream).await;
    let rows = events(&db.pool, "r").await;
    let a: Vec<EventRow> = of(&rows, "a").into_iter().cloned().collect();
    let failing = a[1].clone();
    let followers = &a[2..];

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "runs.toml", "r", Some(5), "");
    let backoff = 0.5;
    let backoff_text = backoff.to_string();
    let hosts = start_hosts(
        &db,
        &config,
        &["host-a"],
        &[
            ("OUTBOX_BASE_BACKOFF_SECONDS", backoff_text.as_str()),
            ("OUTBOX_MAX_BACKOFF_SECONDS", "2"),
        ],
    );

    // While it waits for a retry, the rest of its aggregate waits with it, uncharged.
    wait_until(
        "the failing event waits for a retry",
        PATIENCE,
        async || {
            let rows = events(&db.pool, "r").await;
            let row = rows.iter().find(|r| r.seq == failing.seq).unwrap();
            if row.status != "pending" || row.attempts == 0 {
                return false;
            }
            for follower in followers {
                let f = rows.iter().find(|r| r.seq == follower.seq).unwrap();
                assert_eq!(
                    (f.status.as_str(), f.attempts),
                    ("pending", 0),
                    "seq {} while seq {} waits for its retry",
                    f.seq,
                    failing.seq
                );
            }
            true
        },
    )
    .await;

    let counts = wait_settled(&db.pool, "r", 16, PATIENCE).await;
    assert_eq!(counts.done, 16);
    let rows = events(&db.pool, "r").await;
    let log = delivery_order(&db.pool, "r").await;
    assert_in_order(&log, &rows);
    for row in &rows {
        let expected = if row.seq == failing.seq { 3 } else { 1 };
        assert_eq!(
            row.attempts, expected,
            "attempts of {} seq {}",
            row.aggregate_id, row.seq
        );
    }

    // Retried with backoff: each claim at least the base backoff after the one before.
    let claims = log.claims_of(failing.seq);
    assert_eq!(claims.len(), 3, "{claims:?}");
    for pair in claims.windows(2) {
        let gap = (pair[1].at - pair[0].at).to_std().unwrap().as_secs_f64();
        assert!(
            gap >= backoff,
            "retried {gap:.3} s after the previous attempt"
        );
    }
    // Its followers came in its failing batches and went back: claimed more often than charged.
    let failing_batches: Vec<_> = claims[..2].iter().map(|c| c.claim_batch_id).collect();
    let follower_seqs: BTreeSet<i64> = followers.iter().map(|r| r.seq).collect();
    let handed_back: BTreeSet<i64> = failing_batches
        .iter()
        .flat_map(|b| log.claimed_together(*b))
        .filter(|seq| follower_seqs.contains(seq))
        .collect();
    assert!(
        !handed_back.is_empty(),
        "the run did not reach past the failing event: nothing was handed back"
    );
    for seq in &handed_back {
        assert!(
            log.claims_of(*seq).len() >= 2,
            "seq {seq} was claimed again after the hand-back"
        );
    }
    // ... and became done only with or after it.
    let done_failing = log.done_of(failing.seq).expect("the failing event is done");
    for follower in followers {
        let done = log.done_of(follower.seq).expect("done");
        assert!(
            done.txid == done_failing.txid || done.n > done_failing.n,
            "seq {} done before seq {}",
            follower.seq,
            failing.seq
        );
    }

    // The plugin got each run in seq order.
    let seq_of: BTreeMap<String, (String, i64)> = rows
        .iter()
        .map(|r| (r.id.to_string(), (r.aggregate_id.clone(), r.seq)))
        .collect();
    let mut handled: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for (batch, ids) in plugin_batches(&hosts[0].log_lines()) {
        assert!(!batch.is_empty(), "plugin records name their batch");
        for id in ids {
            let (aggregate, seq) = seq_of[&id].clone();
            handled
                .entry((batch.clone(), aggregate))
                .or_default()
                .push(seq);
        }
    }
    assert!(
        handled.values().any(|seqs| seqs.len() > 1),
        "no batch held more than one event of an aggregate: {handled:?}"
    );
    for ((batch, aggregate), seqs) in &handled {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "batch {batch} handed {aggregate}'s events to the plugin out of order: {seqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_ordering_none_the_oracle_catches_a_later_event_done_before_an_earlier_one() {
    let db = TestDb::new().await;
    db.migrate();
    record_delivery_order(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "loose.toml",
        "loose",
        None,
        "ordering = \"none\"\nconcurrency = 1\n",
    );
    // `x`'s first event fails once; its retry is far off, so the four written after it go ahead.
    let first = insert_events(
        &db.pool,
        &[NewEvent::new(
            "loose",
            "x",
            json!({"outcome": "transient_then_success", "fail_times": 1}),
        )],
    )
    .await[0];
    let _hosts = start_hosts(
        &db,
        &config,
        &["host-a"],
        &[
            ("OUTBOX_BASE_BACKOFF_SECONDS", "60"),
            ("OUTBOX_MAX_BACKOFF_SECONDS", "60"),
        ],
    );
    wait_until("x's first event waits for a retry", PATIENCE, async || {
        let rows = events(&db.pool, "loose").await;
        rows[0].status == "pending" && rows[0].attempts == 1
    })
    .await;
    let mut later: Vec<NewEvent> = (0..4)
        .map(|_| NewEvent::new("loose", "x", json!({"outcome": "success"})))
        .collect();
    later.extend(
        (0..10).map(|i| NewEvent::new("loose", format!("y-{i}"), json!({"outcome": "success"}))),
    );
    insert_events(&db.pool, &later).await;
    wait_until("the later events are done", PATIENCE, async || {
        status_counts(&db.pool, "loose").await.done == 14
    })
    .await;
    // Bring the retry forward rather than wait a minute for it.
    sqlx::query("UPDATE outbox_events SET next_retry_at = now() WHERE id = $1")
        .bind(first)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, "loose", 15, PATIENCE).await.done, 15);

    let rows = events(&db.pool, "loose").await;
    let x = of(&rows, "x");
    let log = delivery_order(&db.pool, "loose").await;
    let violations = log.violations(&rows);
    let mentions = |text: String| violations.iter().any(|v| v.starts_with(&text));
    for later in &x[1..] {
        assert!(
            mentions(format!("x: seq {} claimed", later.seq)),
            "the claim of seq {} behind a pending event is reported: {violations:#?}",
            later.seq
        );
        assert!(
            mentions(format!("x: seq {} done while 1 earlier", later.seq)),
            "seq {} done before seq {} is reported: {violations:#?}",
            later.seq,
            x[0].seq
        );
    }
    assert!(
        violations
            .iter()
            .any(|v| v.contains(&format!("became done before seq {}", x[0].seq))),
        "the commit order breach is reported: {violations:#?}"
    );
    assert!(
        mentions(format!("x: seq {} done at", x[1].seq)),
        "done_at before the earlier event's is reported: {violations:#?}"
    );
    assert!(
        violations.iter().all(|v| v.starts_with("x: ")),
        "only x is out of order: {violations:#?}"
    );
    assert_eq!(
        log.largest_run(),
        4,
        "the four later events of x were claimed together"
    );

    // A settle applied twice to a done row is reported too.
    sqlx::query("UPDATE outbox_events SET done_at = clock_timestamp() WHERE id = $1")
        .bind(x[1].id)
        .execute(&db.pool)
        .await
        .unwrap();
    let log = delivery_order(&db.pool, "loose").await;
    let violations = log.violations(&events(&db.pool, "loose").await);
    assert!(
        violations.contains(&format!("seq {} recorded done 2 times", x[1].seq)),
        "{violations:#?}"
    );
}
