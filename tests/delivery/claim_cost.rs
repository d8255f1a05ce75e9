//! What a claim and a settle cost, read from the plans the server runs: Postgres's own buffer
//! counts (`EXPLAIN (ANALYZE, BUFFERS)`) for the generic plan, the one a running host gets after
//! five executions of a prepared statement. Buffer counts do not depend on the machine's load,
//! so these are ratios a test can hold, unlike timings.
//!
//! - The ordered claim costs O(batch) whatever the skew: ten times the backlog on the same 20
//!   aggregates leaves its cost flat, and so does a long finished history behind them. The
//!   backlog-walking claim it replaced is measured alongside as the positive control: its cost
//!   grows with the backlog, so the measurement can see growth.
//! - It also costs O(batch) whatever the number of aggregates: ten times as many aggregates with
//!   unfinished events (ten each) leaves it flat. The claim before the recursive walk over
//!   the heads (`tests/fixtures/claim_ordered_before_walk.sql`) is the positive control: its
//!   planner read and sorted every head.
//! - Batches in flight cost a claim one read of each of their heads, not a probe of their
//!   events: with eight batches held instead of one its cost barely moves and it probes the
//!   events of the aggregates it takes. The claim before the in-flight marks
//!   (`tests/fixtures/claim_ordered_before_marks.sql`) is the positive control: it probes every
//!   aggregate in flight, so its cost grows with the batches held.
//! - The settle's cost is linear in the batch: no plan node compares every outcome with every
//!   claimed row (the generic plan of the old statement did, 250,000 comparisons for 500).

use crate::common;

use common::*;
use projector_service::settings::{Ordering, ProjectionSpec, Tuning};
use projector_store::outbox::claim::{claim, CLAIM_ORDERED_SQL};
use projector_store::outbox::settle::{settle, SETTLE_SQL};
use projector_store::outbox::Verdict;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

/// The claim this project used before `outbox_heads` (3d50a68): it walks the backlog in seq
/// order and asks, per row, whether an earlier row of its aggregate is unfinished. Read-only here.
const BACKLOG_WALK_SQL: &str = "\
SELECT o.seq
FROM outbox_events o
WHERE o.projection = $1
  AND o.status IN ('pending', 'processing')
  AND (   (o.status = 'pending' AND o.next_retry_at <= now())
       OR (o.status = 'processing' AND o.lease_expires_at < now() AND o.attempts < 5))
  AND NOT EXISTS (
          SELECT 1
          FROM outbox_events p
          WHERE p.projection = o.projection
            AND p.aggregate_id = o.aggregate_id
            AND p.seq < o.seq
            AND p.status NOT IN ('done', 'skipped'))
ORDER BY o.seq + 0
LIMIT $2";

/// The settle statement before this change (3d50a68), the positive control of the settle's
/// measurement: with the join the planner once chose for it, the outcomes are compared with the
/// claimed rows pairwise in a join filter, which the measurement must see.
const OLD_SETTLE_SQL: &str = include_str!("../fixtures/settle_before_heads.sql");

/// The ordered claim before its walk over the heads became recursive (1b20de5): a plain `ORDER
/// BY next_seq` over the heads, which the planner served with a scan and sort of every head.
const OLD_CLAIM_SQL: &str = concat!(
    include_str!("../fixtures/claim_ordered_before_walk.sql"),
    include_str!("../../host/store/src/outbox/claim_returning.sql")
);

fn spec(projection: &str, batch_size: i64) -> ProjectionSpec {
    ProjectionSpec {
        name: projection.to_owned(),
        plugin: "unused.wasm".into(),
        ordering: Ordering::Aggregate,
        tuning: Tuning {
            batch_size,
            ..projector_service::settings::default_tuning()
        },
        config: Default::default(),
        grants: Default::default(),
        memory_limit: projector_core::spec::DEFAULT_MEMORY_BYTES,
        sources: Default::default(),
    }
}

/// The ordered claim as the batch byte bound first wrote it: its UPDATE joined two CTEs, the
/// locked rows and the chosen ones, and compared every pair of them.
const BEFORE_CARRY_CLAIM_SQL: &str = concat!(
    include_str!("../fixtures/claim_ordered_before_carry.sql"),
    include_str!("../../host/store/src/outbox/claim_returning.sql")
);

/// The ordered claim before heads were marked in flight (migration 0013): it probes the events
/// of every aggregate it walks past, those other batches hold included.
const BEFORE_MARKS_CLAIM_SQL: &str = concat!(
    include_str!("../fixtures/claim_ordered_before_marks.sql"),
    include_str!("../../host/store/src/outbox/claim_returning.sql")
);

/// What one execution of a plan cost: buffers touched (hit or read) and the most rows any node
/// threw away after comparing them in a join filter.
#[derive(Debug, Clone, Copy)]
struct Cost {
    buffers: i64,
    join_filter_removed: i64,
    /// Rows of `outbox_heads` the plan's scans of it read (returned or filtered out, every loop).
    heads_read: i64,
    /// Probes of one aggregate's unfinished events (loops of the scans of
    /// `outbox_events_aggregate_unfinished`).
    probes: i64,
}

fn walk(node: &Value, cost: &mut Cost) {
    let n = |k: &str| node.get(k).and_then(Value::as_i64).unwrap_or(0);
    cost.join_filter_removed = cost
        .join_filter_removed
        .max(n("Rows Removed by Join Filter"));
    if node.get("Index Name").and_then(Value::as_str) == Some("outbox_events_aggregate_unfinished")
    {
        cost.probes += n("Actual Loops");
    }
    if node.get("Relation Name").and_then(Value::as_str) == Some("outbox_heads") {
        cost.heads_read +=
            (n("Actual Rows") + n("Rows Removed by Filter")) * n("Actual Loops").max(1);
    }
    for child in node
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, cost);
    }
}

/// Runs `execute` (an `EXECUTE` of a statement prepared on `conn`) under `EXPLAIN (ANALYZE,
/// BUFFERS)` with the generic plan, in a transaction that is rolled back.
async fn cost(conn: &mut PgConnection, execute: &str) -> Cost {
    cost_with(conn, execute, "").await
}

/// [`cost`] with `settings` (`SET LOCAL ...;` statements) applied first.
async fn cost_with(conn: &mut PgConnection, execute: &str, settings: &str) -> Cost {
    let mut tx = conn.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL plan_cache_mode = force_generic_plan; {settings}"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let row = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}"
    ))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let plan: Value = row.get(0);
    tx.rollback().await.unwrap();
    let top = &plan[0]["Plan"];
    let mut c = Cost {
        buffers: top["Shared Hit Blocks"].as_i64().unwrap()
            + top["Shared Read Blocks"].as_i64().unwrap(),
        join_filter_removed: 0,
        heads_read: 0,
        probes: 0,
    };
    walk(top, &mut c);
    c
}

/// The types of the claims' parameters $1..$10; the claims written since the batch byte bound
/// take $11 (`int8`) too.
const CLAIM_TYPES: &str = "text, int8, text, uuid, int8, int4, float8, int4, int4, int4";
const SETTLE_TYPES: &str = "uuid, bigint[], text[], text[], text[], float8[], int, text";

/// The claims [`prepare`] prepares: name, whether it takes the byte bound ($11), statement.
const CLAIMS: [(&str, bool, &str); 4] = [
    ("ordered_claim", true, CLAIM_ORDERED_SQL),
    ("old_ordered_claim", false, OLD_CLAIM_SQL),
    ("before_marks_claim", false, BEFORE_MARKS_CLAIM_SQL),
    ("before_carry_claim", true, BEFORE_CARRY_CLAIM_SQL),
];

async fn prepare(conn: &mut PgConnection) {
    let mut statements: Vec<String> = CLAIMS
        .iter()
        .map(|(name, byte_bound, sql)| {
            let extra = if *byte_bound { ", int8" } else { "" };
            format!("PREPARE {name}({CLAIM_TYPES}{extra}) AS {sql}")
        })
        .collect();
    statements.push(format!(
        "PREPARE backlog_walk(text, int8) AS {BACKLOG_WALK_SQL}"
    ));
    for (name, sql) in [
        ("settle", SETTLE_SQL),
        ("settle_forced", SETTLE_SQL),
        ("old_settle", OLD_SETTLE_SQL),
    ] {
        statements.push(format!("PREPARE {name}({SETTLE_TYPES}) AS {sql}"));
    }
    for statement in statements {
        sqlx::raw_sql(&statement).execute(&mut *conn).await.unwrap();
    }
}

/// A migrated database, and a connection to it with every statement here prepared.
async fn prepared_db() -> (TestDb, PgConnection) {
    let db = TestDb::new().await;
    db.migrate();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    prepare(&mut conn).await;
    (db, conn)
}

/// `EXECUTE` of the claim [`prepare`] prepared as `name`, for `batch` events of `projection` by
/// worker `w`, at the host's default bounds: one event per aggregate, 5 attempts, a 30 s lease,
/// 1 MiB payloads, 64 KiB headers, 1 KiB names, and 4 MiB a batch for the claims that take it.
fn execute_claim(name: &str, projection: &str, batch: u32) -> String {
    let (_, byte_bound, _) = CLAIMS
        .iter()
        .find(|(n, ..)| *n == name)
        .unwrap_or_else(|| panic!("no claim is prepared as {name}"));
    let bound = if *byte_bound { ", 4194304" } else { "" };
    format!(
        "EXECUTE {name}('{projection}', {batch}, 'w', gen_random_uuid(), 1, 5, 30, 1048576, 65536, 1024{bound})"
    )
}

const WALK_100: &str = "EXECUTE backlog_walk('hot', 100)";

async fn add_hot_events(db: &TestDb, n: usize) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("hot", format!("hot-{}", i % 20), json!({"n": i})))
        .collect();
    for chunk in events.chunks(5_000) {
        insert_events(&db.pool, chunk).await;
    }
    sqlx::raw_sql("ANALYZE outbox_events; ANALYZE outbox_heads")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ordered_claim_costs_the_batch_not_the_backlog_or_the_history() {
    let (db, mut conn) = prepared_db().await;
    let claim_100 = execute_claim("ordered_claim", "hot", 100);

    // 2,000 events on 20 aggregates, then ten times that on the same 20.
    add_hot_events(&db, 2_000).await;
    let claim_small = cost(&mut conn, &claim_100).await;
    let walk_small = cost(&mut conn, WALK_100).await;
    add_hot_events(&db, 18_000).await;
    let claim_big = cost(&mut conn, &claim_100).await;
    let walk_big = cost(&mut conn, WALK_100).await;
    eprintln!(
        "buffers per claim of 100, backlog 2,000 -> 20,000 on 20 aggregates: ordered claim {} -> {}, backlog walk (control) {} -> {}",
        claim_small.buffers, claim_big.buffers, walk_small.buffers, walk_big.buffers
    );
    assert!(
        walk_big.buffers > 5 * walk_small.buffers,
        "control: the backlog walk should cost ~10x with 10x the backlog, measured {} -> {}",
        walk_small.buffers,
        walk_big.buffers
    );
    assert!(
        claim_big.buffers * 2 < claim_small.buffers * 3,
        "the ordered claim grew with the backlog: {} -> {} buffers",
        claim_small.buffers,
        claim_big.buffers
    );

    // A long finished history behind the same aggregates: settle 6,000 of them (300 each).
    let mut p = spec("hot", 1_000);
    p.tuning.events_per_aggregate = 50;
    let mut settled = 0;
    while settled < 6_000 {
        let c = claim(&db.pool, &p, "w").await.unwrap();
        assert!(
            !c.events.is_empty(),
            "the claim came back empty after {settled}"
        );
        let verdicts = vec![Verdict::Success; c.events.len()];
        settle(&db.pool, &c, &verdicts, &p.tuning, "v")
            .await
            .unwrap();
        settled += c.events.len();
    }
    let claim_after = cost(&mut conn, &claim_100).await;
    eprintln!(
        "buffers per claim of 100 after {settled} events of those aggregates were settled: {}",
        claim_after.buffers
    );
    assert!(
        claim_after.buffers * 2 < claim_small.buffers * 3,
        "the ordered claim grew with the finished history: {} -> {} buffers",
        claim_small.buffers,
        claim_after.buffers
    );
}

/// Ten events on each of the aggregates `wide-<first>` .. `wide-<first + aggregates - 1>` of
/// projection `wide`, interleaved as independent writers interleave them (the bench's shape).
async fn add_wide_events(db: &TestDb, first: i64, aggregates: i64) {
    sqlx::query(
        "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
         SELECT 'wide', 'wide.changed', 'wide-' || ($1 + i % $2), jsonb_build_object('n', i)
         FROM generate_series(0, 10 * $2 - 1) AS i",
    )
    .bind(first)
    .bind(aggregates)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE outbox_events; ANALYZE outbox_heads")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ordered_claim_costs_the_batch_not_the_number_of_aggregates() {
    let (db, mut conn) = prepared_db().await;
    let new = execute_claim("ordered_claim", "wide", 100);
    let old = execute_claim("old_ordered_claim", "wide", 100);

    // A host runs whichever plan Postgres picks for its prepared statement: a custom plan for
    // the first five executions and whenever the generic one is estimated dearer. The old claim's
    // plan depended on the heads' statistics; the recursive walk's does not, and it is measured
    // under both.
    let custom = "SET LOCAL plan_cache_mode = force_custom_plan;";
    // Heads come and go all day (a head is deleted when its aggregate's last event is done), so
    // the table carries dead space until vacuum: 100,000 heads of another projection added and
    // removed. With it, the old claim's custom plan scanned and sorted every head.
    sqlx::raw_sql(
        "INSERT INTO outbox_heads (projection, aggregate_id, next_seq)
         SELECT 'gone', 'gone-' || i, i FROM generate_series(1, 100000) AS i;
         DELETE FROM outbox_heads WHERE projection = 'gone';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // 2,000 aggregates with ten unfinished events each, then 20,000.
    add_wide_events(&db, 0, 2_000).await;
    let new_small = cost(&mut conn, &new).await;
    let new_small_custom = cost_with(&mut conn, &new, custom).await;
    let old_small = cost_with(&mut conn, &old, custom).await;
    add_wide_events(&db, 2_000, 18_000).await;
    let new_big = cost(&mut conn, &new).await;
    let new_big_custom = cost_with(&mut conn, &new, custom).await;
    let old_big = cost_with(&mut conn, &old, custom).await;
    eprintln!(
        "heads read per claim of 100, custom plan, 2,000 -> 20,000 aggregates: recursive walk {} -> {}",
        new_small_custom.heads_read, new_big_custom.heads_read
    );
    assert!(
        new_big_custom.heads_read * 2 < new_small_custom.heads_read * 3,
        "the ordered claim's custom plan grew with the number of aggregates: {} -> {} heads read",
        new_small_custom.heads_read,
        new_big_custom.heads_read
    );
    eprintln!(
        "heads read per claim of 100, 2,000 -> 20,000 aggregates with ten events each: recursive walk, generic plan {} -> {} ({} -> {} buffers); claim before it, custom plan (control) {} -> {} ({} -> {} buffers)",
        new_small.heads_read, new_big.heads_read, new_small.buffers, new_big.buffers,
        old_small.heads_read, old_big.heads_read, old_small.buffers, old_big.buffers
    );
    assert!(
        old_big.heads_read > 5 * old_small.heads_read,
        "control: the claim before the recursive walk should read every head, measured {} -> {}",
        old_small.heads_read,
        old_big.heads_read
    );
    assert!(
        new_big.heads_read * 2 < new_small.heads_read * 3
            && new_big.buffers * 2 < new_small.buffers * 3,
        "the ordered claim grew with the number of aggregates: {} -> {} heads read, {} -> {} buffers",
        new_small.heads_read,
        new_big.heads_read,
        new_small.buffers,
        new_big.buffers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_in_flight_cost_a_claim_one_read_of_their_heads_not_a_probe() {
    let (db, mut conn) = prepared_db().await;
    let new = execute_claim("ordered_claim", "wide", 100);
    let before = execute_claim("before_marks_claim", "wide", 100);
    // 2,000 aggregates with ten events each; claims of 100 held, as other loops hold theirs.
    add_wide_events(&db, 0, 2_000).await;
    let p = spec("wide", 100);
    let mut held = 0;
    let mut at = Vec::new();
    for in_flight in [1, 8] {
        while held < in_flight {
            let c = claim(&db.pool, &p, "other-loop").await.unwrap();
            assert_eq!(c.events.len(), 100, "batch {held} in flight");
            held += 1;
        }
        at.push((
            in_flight,
            cost(&mut conn, &new).await,
            cost(&mut conn, &before).await,
        ));
    }
    let marked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_heads WHERE projection = 'wide' AND claimed_until > now()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        marked, 800,
        "every head of the 800 aggregates in flight is marked"
    );
    let (_, new_one, before_one) = at[0];
    let (_, new_eight, before_eight) = at[1];
    eprintln!(
        "claim of 100 with 1 -> 8 batches in flight: marked walk {} -> {} buffers, {} -> {} probes; before the marks (control) {} -> {} buffers, {} -> {} probes",
        new_one.buffers, new_eight.buffers, new_one.probes, new_eight.probes,
        before_one.buffers, before_eight.buffers, before_one.probes, before_eight.probes
    );
    assert!(
        before_eight.probes >= before_one.probes + 600 && before_eight.buffers > 2 * before_one.buffers,
        "control: the claim before the marks should probe every aggregate in flight, measured {} -> {} probes, {} -> {} buffers",
        before_one.probes, before_eight.probes, before_one.buffers, before_eight.buffers
    );
    assert!(
        new_one.probes <= 110 && new_eight.probes <= 110,
        "the claim probed aggregates in flight: {} and {} probes for 100 events",
        new_one.probes,
        new_eight.probes
    );
    assert!(
        new_eight.buffers * 4 < new_one.buffers * 5,
        "the claim's cost grew with the batches in flight: {} -> {} buffers",
        new_one.buffers,
        new_eight.buffers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_of_500_compares_no_pairs_with_a_finished_history_behind_it() {
    let (db, mut conn) = prepared_db().await;
    let new = execute_claim("ordered_claim", "wide", 500);
    let before = execute_claim("before_carry_claim", "wide", 500);
    // 100,000 finished events ahead of 2,000 aggregates with ten pending each. The claim's CTEs
    // are estimated at a row or two, and the byte bound's filter made the chosen rows' estimate
    // smaller still: as first written (the control), the UPDATE's join of the locked rows to the
    // chosen ones became a nested loop (seen with auto_explain in a release drain behind 500,000
    // done rows: 124,750 pairs compared for a batch of 500, 38 of the claim's 61 ms).
    sqlx::raw_sql(
        "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload, status, done_at)
         SELECT 'wide', 'wide.changed', 'old-' || (i % 10000), '{}', 'done', now()
         FROM generate_series(1, 100000) AS i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    add_wide_events(&db, 0, 2_000).await;
    let custom = "SET LOCAL plan_cache_mode = force_custom_plan;";
    let new_generic = cost(&mut conn, &new).await;
    let new_custom = cost_with(&mut conn, &new, custom).await;
    let before_generic = cost(&mut conn, &before).await;
    eprintln!(
        "rows compared and thrown away by a join filter, claim of 500: now {} (generic plan) / {} (custom); before (control, generic) {}",
        new_generic.join_filter_removed, new_custom.join_filter_removed, before_generic.join_filter_removed
    );
    assert!(
        before_generic.join_filter_removed > 100_000,
        "control: the claim before this change should compare every pair, measured {}",
        before_generic.join_filter_removed
    );
    assert!(
        new_generic.join_filter_removed < 500 && new_custom.join_filter_removed < 500,
        "the claim compares pairs: {} (generic) / {} (custom) rows thrown away by a join filter",
        new_generic.join_filter_removed,
        new_custom.join_filter_removed
    );
}

/// The settle of a claimed batch, as an `EXECUTE` of the prepared `settle` with every outcome
/// `success`.
async fn settle_statement(db: &TestDb, projection: &str, batch: i64) -> String {
    let c = claim(&db.pool, &spec(projection, batch), "w")
        .await
        .unwrap();
    assert_eq!(c.events.len() as i64, batch);
    let seqs: Vec<String> = c.events.iter().map(|e| e.seq.to_string()).collect();
    let n = c.events.len();
    format!(
        "EXECUTE settle('{}', '{{{}}}', '{{{}}}', '{{{}}}', '{{{}}}', '{{{}}}', 5, 'v')",
        c.batch_id,
        seqs.join(","),
        vec!["success"; n].join(","),
        vec!["NULL"; n].join(","),
        vec!["NULL"; n].join(","),
        vec!["0"; n].join(","),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_settle_costs_what_its_batch_holds_in_the_generic_plan() {
    let db = TestDb::new().await;
    db.migrate();
    // The index on the fencing token that migration 0001 made and 0008 dropped: the old
    // statement's bad plan ran through it, so the control needs it back, and the new statement
    // must find each row by its key even with it there.
    sqlx::raw_sql(
        "CREATE INDEX outbox_events_claim_batch ON outbox_events (claim_batch_id) \
         WHERE status = 'processing'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (projection, n) in [("small", 100), ("large", 1_000)] {
        let events: Vec<NewEvent> = (0..2 * n)
            .map(|i| NewEvent::new(projection, format!("agg-{}", i % n), json!({"n": i})))
            .collect();
        insert_events(&db.pool, &events).await;
    }
    sqlx::raw_sql("ANALYZE outbox_events; ANALYZE outbox_heads")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    prepare(&mut conn).await;
    let small = settle_statement(&db, "small", 100).await;
    let large = settle_statement(&db, "large", 1_000).await;
    let small = cost(&mut conn, &small).await;
    let large_cost = cost(&mut conn, &large).await;
    // The plan shape the old statement's generic plan got (the planner's choice then, forced
    // here by taking hash and merge joins away): the claimed rows outside, the outcomes inside,
    // matched by a join filter. The new statement, forced the same way, must still find each
    // row by its key. (Generic plans are cached per statement: these come after the others.)
    let forcing = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;";
    let control = cost_with(
        &mut conn,
        &large.replace("EXECUTE settle(", "EXECUTE old_settle("),
        forcing,
    )
    .await;
    let forced = cost_with(
        &mut conn,
        &large.replace("EXECUTE settle(", "EXECUTE settle_forced("),
        forcing,
    )
    .await;
    eprintln!(
        "without hash or merge joins: the settle before this change (3d50a68) dropped {} rows in a join filter, this one {}",
        control.join_filter_removed, forced.join_filter_removed
    );
    assert!(
        control.join_filter_removed >= 100_000,
        "control: a pairwise join filter should drop ~1,000,000 rows, measured {}",
        control.join_filter_removed
    );
    assert!(
        forced.join_filter_removed <= 1_000,
        "without hash joins the settle compares outcomes with rows pairwise: {} rows dropped",
        forced.join_filter_removed
    );
    let large = large_cost;
    eprintln!(
        "settle, generic plan: batch 100 {} buffers (join filter dropped at most {} rows), batch 1,000 {} buffers (at most {})",
        small.buffers, small.join_filter_removed, large.buffers, large.join_filter_removed
    );
    assert!(
        large.join_filter_removed <= 1_000,
        "a node of the settle compared outcomes with rows pairwise: {} rows dropped by a join filter for a batch of 1,000",
        large.join_filter_removed
    );
    assert!(
        large.buffers < 15 * small.buffers,
        "the settle's cost grew faster than its batch: {} buffers for 100, {} for 1,000",
        small.buffers,
        large.buffers
    );
}
