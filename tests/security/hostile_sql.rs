//! Hostile `sql` plugins: a plugin granted `sql` that runs whatever statements its payload names
//! (`sql-probe`), tried as an attacker would. Each scenario shows containment: the attacking event
//! ends `failed` with a reason that says what the host refused, nothing outside the grants
//! changed (other projections' rows, the credentials table, role memberships, files on the
//! server), the host logs what it refused, and the other events keep flowing.

use crate::common;

use common::*;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Everything outside the grants that an escalation would change: other projections' rows, the
/// credentials table, role memberships and attributes, the secret table.
async fn outside_the_grants(db: &TestDb) -> Value {
    let other: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, status FROM outbox_events WHERE projection <> 'probe' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let credentials: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT projection, role::text, password FROM projector_sql_roles ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let members: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.rolname::text, m.rolname::text FROM pg_auth_members a
         JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let attributes: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolcreaterole FROM pg_roles WHERE rolname LIKE 'projector%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let secret: Vec<(i32, String)> = sqlx::query_as("SELECT id, note FROM secret ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    json!({
        "other": other, "credentials": credentials, "members": members,
        "attributes": attributes, "secret": secret,
    })
}

/// The login of projection `probe`'s role, with the password the host stored: (role, options).
async fn probe_role_login(db: &TestDb) -> (String, PgConnectOptions) {
    let (role, password): (String, String) = sqlx::query_as(
        "SELECT role::text, password FROM projector_sql_roles WHERE projection = 'probe'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the host provisioned the probe role");
    let options = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .username(&role)
        .password(&password);
    (role, options)
}

/// A connection logged in as projection `probe`'s role.
async fn connect_as_probe_role(db: &TestDb) -> (String, PgConnection) {
    let (role, options) = probe_role_login(db).await;
    let conn = PgConnection::connect_with(&options)
        .await
        .expect("log in as the projection role");
    (role, conn)
}

fn row<'a>(rows: &'a [EventRow], id: &uuid::Uuid) -> &'a EventRow {
    rows.iter().find(|r| r.id == *id).expect("event row")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_role_cannot_shadow_the_outbox_to_run_code_as_the_host() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    // Another projection's pending events: the published attack marked them done.
    insert_events(
        &db.pool,
        &(0..3)
            .map(|i| NewEvent::new("other", format!("o{i}"), json!({})))
            .collect::<Vec<_>>(),
    )
    .await;
    let marker = format!("/tmp/projector-pwned-{}", uuid::Uuid::new_v4().simple());
    let copy = format!("COPY allowed FROM PROGRAM 'touch {marker}'");
    // The attack as the plugin would send it, one step per event (the probe stops at the first
    // failing statement of an event).
    let steps: Vec<String> = vec![
        "CREATE TEMP TABLE outbox_events (seq bigint, claim_batch_id uuid, status text)".into(),
        "CREATE FUNCTION pg_temp.evil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE public.outbox_events SET status = 'done' WHERE projection = 'other'; RETURN NULL; END $$".into(),
        "SELECT * FROM projector_settle(gen_random_uuid(), ARRAY[1]::bigint[], ARRAY['success'], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[0]::float8[], 5, 'x')".into(),
        "GRANT pg_execute_server_program TO CURRENT_USER".into(),
        copy.clone(),
        "SELECT role, password FROM projector_sql_roles".into(),
        "ALTER ROLE CURRENT_USER CREATEROLE".into(),
    ];
    let mut events: Vec<NewEvent> = steps
        .iter()
        .enumerate()
        .map(|(i, sql)| {
            let mut p = statements(&[(sql.as_str(), json!([]))]);
            p["ignore_errors"] = json!(true);
            NewEvent::new("probe", format!("attack-{i}"), p)
        })
        .collect();
    events.push(NewEvent::new(
        "probe",
        "good",
        statements(&[("INSERT INTO allowed VALUES (1, 'ok')", json!([]))]),
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = probe_config(dir.path(), "");
    // Provision first (the host does at start), then record what lies outside the grants.
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let before = outside_the_grants(&db).await;
    let ids = insert_events(&db.pool, &events).await;
    wait_settled(&db.pool, "probe", events.len() as i64, PATIENCE).await;
    let rows = common::events(&db.pool, "probe").await;
    for (id, step) in ids.iter().zip(&steps) {
        let r = row(&rows, id);
        if step.contains("projector_settle") {
            // The one function the role may call: fenced by a claim id nobody else knows, it
            // settles nothing (the rows outside the grants are compared below).
            continue;
        }
        // The plugin ignored every error and answered success: the host's verdict stands, or
        // Postgres refused it and the event's writes are gone either way.
        assert_ne!(r.status, "done", "{step}: {r:?}");
    }
    assert_eq!(row(&rows, ids.last().unwrap()).status, "done");
    assert_eq!(allowed_ids(&db).await, vec![1]);
    assert_eq!(
        outside_the_grants(&db).await,
        before,
        "nothing outside the grants changed"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "COPY FROM PROGRAM ran"
    );
    let log = host.log_text();
    assert!(log.contains("refused a plugin's sql statement"), "{log}");
    drop(host);

    // Postgres itself, whatever the host's statement check lets through: the role may not
    // create temporary tables or anything else, and is a member of nothing.
    let (role, mut conn) = connect_as_probe_role(&db).await;
    let (temp, create_db, schemas): (bool, bool, Vec<String>) = sqlx::query_as(
        "SELECT has_database_privilege(current_user, current_database(), 'TEMPORARY'),
                has_database_privilege(current_user, current_database(), 'CREATE'),
                ARRAY(SELECT nspname::text FROM pg_namespace WHERE has_schema_privilege(current_user, oid, 'CREATE'))",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        !temp && !create_db && schemas.is_empty(),
        "{role}: temp {temp}, create {create_db}, schemas {schemas:?}"
    );
    let err = sqlx::raw_sql("CREATE TEMP TABLE outbox_events (seq bigint)")
        .execute(&mut conn)
        .await
        .expect_err("no TEMP for the role");
    assert!(err.to_string().contains("permission denied"), "{err}");

    // And even a role that was (wrongly) given TEMP cannot make the settle function, which runs
    // as its owner, see a temporary `outbox_events`: its search path is pinned, pg_temp last.
    sqlx::raw_sql(&format!(
        "GRANT TEMPORARY ON DATABASE {} TO \"{role}\"",
        db.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    conn.close().await.ok();
    let (_, mut conn) = connect_as_probe_role(&db).await;
    let batch = uuid::Uuid::new_v4();
    sqlx::raw_sql(
        "CREATE TEMP TABLE outbox_events (seq bigint, claim_batch_id uuid, status text, attempts int,
             next_retry_at timestamptz, lease_expires_at timestamptz, error_reason text, error text,
             failure_kind text, projection_version text, done_at timestamptz);
         CREATE FUNCTION pg_temp.evil() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.allowed VALUES (666, current_user); RETURN NULL; END $$;
         CREATE TRIGGER evil AFTER UPDATE ON pg_temp.outbox_events FOR EACH ROW EXECUTE FUNCTION pg_temp.evil();",
    )
    .execute(&mut conn)
    .await
    .expect("shadow objects (TEMP granted by hand)");
    sqlx::query("INSERT INTO pg_temp.outbox_events (seq, claim_batch_id, status, attempts) VALUES (1, $1, 'processing', 1)")
        .bind(batch)
        .execute(&mut conn)
        .await
        .unwrap();
    let settled: Vec<(i64,)> = sqlx::query_as(
        "SELECT seq FROM public.projector_settle($1, ARRAY[1]::bigint[], ARRAY['success'], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[0]::float8[], 5, 'x')",
    )
    .bind(batch)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        settled.is_empty(),
        "the function settled the shadow row: {settled:?}"
    );
    let shadow_hit: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, note FROM allowed WHERE id = 666")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        shadow_hit.is_empty(),
        "the trigger ran inside projector_settle as {shadow_hit:?}"
    );
    let config: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(proconfig) FROM pg_proc WHERE proname = 'projector_settle'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        config,
        vec!["search_path=pg_catalog, public, pg_temp".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_that_would_change_the_transaction_or_the_session_fail_their_event() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let forbidden = [
        "COMMIT",
        "BEGIN",
        "SAVEPOINT mine",
        "RELEASE SAVEPOINT projector_batch",
        "ROLLBACK",
        "SET LOCAL statement_timeout = 0",
        "SET ROLE postgres",
        "RESET ALL",
        "LISTEN projector_outbox",
        "DISCARD ALL",
        "COPY allowed TO STDOUT",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT 1; SELECT 2",
        "SELECT pg_advisory_lock(hashtext('projector_sql_roles'))",
        "SELECT set_config('statement_timeout', '0', false)",
        "SELECT query_to_xml('select set_config(''statement_timeout'', ''0'', false)', true, true, '')",
        "PREPARE p AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ];
    // Each event writes, then tries the statement, ignores the refusal and answers success (a
    // COMMIT that got through would make the write permanent whatever happens next).
    let mut events = Vec::new();
    for (i, stmt) in forbidden.iter().enumerate() {
        let mut p = statements(&[
            (
                "INSERT INTO allowed VALUES ($1, 'attack')",
                json!([100 + i]),
            ),
            (stmt, json!([])),
        ]);
        p["ignore_errors"] = json!(true);
        events.push(NewEvent::new("probe", format!("attack-{i}"), p));
        events.push(NewEvent::new(
            "probe",
            format!("good-{i}"),
            statements(&[("INSERT INTO allowed VALUES ($1, 'ok')", json!([i]))]),
        ));
    }
    let ids = insert_events(&db.pool, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = probe_config(dir.path(), "");
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "8"), ("OUTBOX_CONCURRENCY", "2")],
    );
    host.wait_ready(PATIENCE);
    wait_settled(&db.pool, "probe", events.len() as i64, PATIENCE).await;
    let rows = common::events(&db.pool, "probe").await;
    for (i, stmt) in forbidden.iter().enumerate() {
        let attack = row(&rows, &ids[2 * i]);
        assert_eq!(attack.status, "failed", "{stmt}: {attack:?}");
        assert_eq!(
            attack.error_reason.as_deref(),
            Some("sql_forbidden_statement"),
            "{stmt}"
        );
        assert_eq!(
            attack.failure_kind.as_deref(),
            Some("deterministic"),
            "{stmt}"
        );
        assert_eq!(attack.attempts, 1, "{stmt}");
        assert_eq!(row(&rows, &ids[2 * i + 1]).status, "done", "{stmt}");
    }
    // Only the good events' writes exist: no attacking write survived, however it ended.
    assert_eq!(
        allowed_ids(&db).await,
        (0..forbidden.len() as i32).collect::<Vec<_>>()
    );
    let refusals = host
        .log_lines()
        .into_iter()
        .filter(|l| field_str(l, "message").as_deref() == Some("refused a plugin's sql statement"))
        .count();
    assert!(refusals >= forbidden.len(), "{refusals} refusals logged");
    // No lock, listen or setting outlived its batch: no projection backend holds an advisory
    // lock, and a second host starts at once (it takes the host's own lock keys at start).
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND a.usename::text LIKE 'projector\\_probe\\_%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(locks, 0);
    let started = Instant::now();
    let mut second = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    second.wait_ready(Duration::from_secs(30));
    println!("second host ready after {:?}", started.elapsed());
    drop(second);
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_statement_never_outlives_the_batch_deadline() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = probe_config(dir.path(), "");
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[
            ("OUTBOX_MAX_PROCESSING_SECONDS", "3"),
            ("OUTBOX_LEASE_SECONDS", "30"),
            ("OUTBOX_BATCH_SIZE", "1"),
        ],
    );
    host.wait_ready(PATIENCE);
    // 1. A long statement: the server's statement_timeout (nine tenths of the batch budget) ends
    //    it, and the plugin still has time to answer.
    // 2. The plugin spends most of the budget first, then starts a long statement: the host's
    //    own deadline fires before the server's timeout, and the host ends the backend.
    let mut late = statements(&[("SELECT pg_sleep(60)", json!([]))]);
    late["sleep_before_ms"] = json!(2200);
    let events = vec![
        NewEvent::new(
            "probe",
            "slow",
            statements(&[("SELECT pg_sleep(60)", json!([]))]),
        ),
        NewEvent::new("probe", "late", late),
        NewEvent::new(
            "probe",
            "after",
            statements(&[("INSERT INTO allowed VALUES (1, 'after')", json!([]))]),
        ),
    ];
    let started = Instant::now();
    let ids = insert_events(&db.pool, &events).await;
    wait_settled(&db.pool, "probe", 3, PATIENCE).await;
    let took = started.elapsed();
    let rows = common::events(&db.pool, "probe").await;
    let slow = row(&rows, &ids[0]);
    assert_eq!(
        (slow.status.as_str(), slow.error_reason.as_deref()),
        ("failed", Some("sql_timeout")),
        "{slow:?}"
    );
    let late = row(&rows, &ids[1]);
    assert_eq!(
        (late.status.as_str(), late.error_reason.as_deref()),
        ("failed", Some("sql_timeout")),
        "{late:?}"
    );
    assert_eq!(row(&rows, &ids[2]).status, "done");
    // Far below the 60 s the statements asked for, and below the 30 s lease: no event waited
    // for a lease to expire.
    assert!(took < Duration::from_secs(25), "took {took:?}");
    println!("three events settled in {took:?}");
    let sleeping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sleeping, 0, "a plugin statement is still running");
    assert!(
        host.log_text()
            .contains("ended a projection's stalled database backend"),
        "the late statement was ended by the host: {}",
        late.error.as_deref().unwrap_or("")
    );
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_results_are_streamed_and_stop_at_their_row_and_byte_bounds() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = probe_config(
        dir.path(),
        "sql_max_rows = 100\nsql_max_result_bytes = 4194304\n",
    );
    let query = |sql: &str| {
        let mut p = json!({"statements": [{"sql": sql, "params": [], "query": true}]});
        p["ignore_errors"] = json!(true);
        p
    };
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let idle_peak = peak_rss_mib(host.pid());
    let events = vec![
        NewEvent::new(
            "probe",
            "rows",
            query("SELECT g FROM generate_series(1, 100000) g"),
        ),
        NewEvent::new(
            "probe",
            "bytes",
            query("SELECT repeat('x', 10000000) AS pad FROM generate_series(1, 16)"),
        ),
        NewEvent::new(
            "probe",
            "fits",
            query("SELECT g FROM generate_series(1, 100) g"),
        ),
    ];
    let ids = insert_events(&db.pool, &events).await;
    wait_settled(&db.pool, "probe", 3, PATIENCE).await;
    let rows = common::events(&db.pool, "probe").await;
    let many = row(&rows, &ids[0]);
    assert_eq!(
        many.error_reason.as_deref(),
        Some("sql_result_too_large"),
        "{many:?}"
    );
    assert!(
        many.error
            .as_deref()
            .unwrap()
            .contains("100 rows (sql_max_rows)"),
        "{many:?}"
    );
    let big = row(&rows, &ids[1]);
    assert_eq!(
        big.error_reason.as_deref(),
        Some("sql_result_too_large"),
        "{big:?}"
    );
    assert!(
        big.error
            .as_deref()
            .unwrap()
            .contains("4194304 bytes (sql_max_result_bytes)"),
        "{big:?}"
    );
    assert_eq!(row(&rows, &ids[2]).status, "done");
    // 160 MB were asked for; the host holds one 10 MB row at a time, never the result.
    let grew = peak_rss_mib(host.pid()) - idle_peak;
    println!("host peak RSS grew {grew:.1} MiB for a 160 MB query result (bound 4 MiB + one row)");
    assert!(grew < 100.0, "peak RSS grew {grew:.1} MiB");
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_fields_are_refused_at_the_claim_without_being_read() {
    let db = TestDb::new().await;
    db.migrate();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "p.toml",
        format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\n",
            plugin("scripted").display()
        ),
    );
    let mut host = Host::start(
        &db.url,
        &["--config", cfg.to_str().unwrap()],
        &[("OUTBOX_BATCH_SIZE", "50")],
    );
    host.wait_ready(PATIENCE);
    let idle_peak = peak_rss_mib(host.pid());
    // Five 20 MB payloads (the default bound is 1 MiB), headers of 100 kB (bound 64 KiB), an
    // event type and an aggregate id of 1,500 bytes (bound 1,024), and ordinary events.
    sqlx::raw_sql(
        "INSERT INTO outbox_events (projection, event_type, aggregate_id, payload, headers)
         SELECT 'p', 'big', 'big-' || g, jsonb_build_object('outcome', 'trap', 'pad', repeat('x', 20000000)), '{}'
           FROM generate_series(1, 5) g;
         INSERT INTO outbox_events (projection, event_type, aggregate_id, payload, headers) VALUES
           ('p', 't', 'h', '{\"outcome\": \"trap\"}', jsonb_build_object('h', repeat('y', 100000))),
           ('p', repeat('t', 1500), 'e', '{\"outcome\": \"trap\"}', '{}'),
           ('p', 't', repeat('a', 1500), '{\"outcome\": \"trap\"}', '{}');
         INSERT INTO outbox_events (projection, event_type, aggregate_id, payload)
         SELECT 'p', 't', 'ok-' || g, '{\"outcome\": \"success\"}' FROM generate_series(1, 10) g;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let counts = wait_settled(&db.pool, "p", 18, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (10, 8));
    let rows = common::events(&db.pool, "p").await;
    let reason = |pred: &dyn Fn(&EventRow) -> bool| -> Vec<String> {
        rows.iter()
            .filter(|r| pred(r))
            .map(|r| r.error_reason.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        reason(&|r| r.event_type == "big"),
        vec!["payload_too_large"; 5]
    );
    assert_eq!(
        reason(&|r| r.aggregate_id == "h"),
        vec!["headers_too_large"]
    );
    assert_eq!(
        reason(&|r| r.aggregate_id == "e"),
        vec!["event_type_too_long"]
    );
    assert_eq!(
        reason(&|r| r.aggregate_id.len() == 1500),
        vec!["aggregate_id_too_long"]
    );
    let big = rows.iter().find(|r| r.event_type == "big").unwrap();
    assert!(
        big.error.as_deref().unwrap().contains("was not read"),
        "{big:?}"
    );
    assert_eq!(
        host.metric_sum("projector_plugin_traps_total", &[]),
        0.0,
        "the plugin never saw them"
    );
    let grew = peak_rss_mib(host.pid()) - idle_peak;
    println!("host peak RSS grew {grew:.1} MiB while 100 MB of payload was claimed");
    assert!(grew < 40.0, "peak RSS grew {grew:.1} MiB");
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_source_reads_only_the_tables_the_grants_name() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    sqlx::raw_sql("INSERT INTO allowed VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .execute(&db.pool)
        .await
        .unwrap();
    let select = |from: &str, key: &str| {
        format!("SELECT gen_random_uuid() AS id, 'x' AS event_type, {key}::text AS aggregate_id, '{{}}'::jsonb AS payload FROM {from}")
    };
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, source_tables: &str| {
        write_file(
            dir.path(),
            name,
            format!(
                "[[projection]]\nname = \"probe\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [\"allowed\"]\nsource_tables = [{source_tables}]\n",
                plugin("sql_probe").display()
            ),
        )
    };
    let rebuild = |cfg: &std::path::Path, source: &str| {
        let (out, report) = run_rebuild(&db.url, cfg, "probe", &["--source", source], &[]);
        (out.status.code(), output_text(&out), report)
    };
    let narrow = config("narrow.toml", "\"allowed\"");
    // The credentials and a table the grants do not name: Postgres refuses, nothing is applied.
    for source in [
        select("projector_sql_roles", "password"),
        select("secret", "note"),
    ] {
        let (code, text, _) = rebuild(&narrow, &source);
        assert_eq!(code, Some(2), "{source}: {text}");
        assert!(text.contains("permission denied"), "{source}: {text}");
    }
    // A way back to the host's own role is refused before Postgres sees it.
    let back = format!(
        "{} WHERE set_config('role', 'none', true) IS NOT NULL",
        select("allowed", "id")
    );
    let (code, text, _) = rebuild(&narrow, &back);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("the source query is refused") && text.contains("set_config"),
        "{text}"
    );
    // Positive controls: the granted table reads, and so does `secret` once it is granted.
    let (code, text, report) = rebuild(&narrow, &select("allowed", "id"));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["rows_read"], 3, "{report}");
    let wide = config("wide.toml", "\"allowed\", \"secret\"");
    let (code, text, report) = rebuild(&wide, &select("secret", "note"));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["rows_read"], 1, "{report}");
    // And narrowing the grant again takes `secret` back.
    let (code, text, _) = rebuild(&narrow, &select("secret", "note"));
    assert_eq!(code, Some(2), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn whatever_a_session_is_left_holding_is_reset_before_the_connection_serves_again() {
    // The statement policy refuses every known way to leave state on a session; this is the
    // layer under it, for a way nobody thought of: the projection role's pool resets each
    // connection when it is released.
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(
        &db.url,
        &["--config", probe_config(dir.path(), "").to_str().unwrap()],
        &[],
    );
    host.wait_ready(PATIENCE);
    drop(host);
    let (_, options) = probe_role_login(&db).await;
    // Three kinds of session state: a session advisory lock, a setting, a LISTEN.
    let state = "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                        current_setting('work_mem'),
                        (SELECT count(*) FROM pg_listening_channels()),
                        pg_backend_pid()";
    let leave_state =
        "SELECT pg_advisory_lock(4242); SET work_mem = '77MB'; LISTEN projector_outbox";
    let left = (1i64, "77MB".to_owned(), 1i64);
    for (reset, pool) in [
        (
            true,
            projector_store::sql_roles::restricted_pool(options.clone(), 1),
        ),
        // Positive control: the same pool without the reset keeps what was left.
        (
            false,
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options.clone()),
        ),
    ] {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::raw_sql(leave_state)
            .execute(&mut *conn)
            .await
            .unwrap();
        let (locks, work_mem, listens, pid): (i64, String, i64, i32) =
            sqlx::query_as(state).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(
            (locks, work_mem, listens),
            left.clone(),
            "the state was left"
        );
        drop(conn);
        let mut again = pool.acquire().await.unwrap();
        let (locks, work_mem, listens, same): (i64, String, i64, i32) =
            sqlx::query_as(state).fetch_one(&mut *again).await.unwrap();
        assert_eq!(same, pid, "the same connection serves again");
        println!(
            "reset {reset}: advisory locks {locks}, work_mem {work_mem}, listens {listens} on the next use"
        );
        if reset {
            assert_eq!((locks, work_mem.as_str(), listens), (0, "4MB", 0));
        } else {
            assert_eq!(
                (locks, work_mem, listens),
                left.clone(),
                "the control keeps it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_role_cannot_take_the_claim_turn_to_stall_every_host() {
    let db = TestDb::new().await;
    probe_setup(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = probe_config(dir.path(), "");
    // The host provisions the role at start, and its first claim makes the probe's turn row.
    let mut host = Host::start(&db.url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    let ids = insert_events(
        &db.pool,
        &[NewEvent::new(
            "probe",
            "a",
            statements(&[("INSERT INTO allowed VALUES (1, 'ok')", json!([]))]),
        )],
    )
    .await;
    wait_settled(&db.pool, "probe", ids.len() as i64, PATIENCE).await;
    host.sigterm();
    host.wait_exit(PATIENCE);
    let (_, mut conn) = connect_as_probe_role(&db).await;

    // Positive control: the role may take transaction advisory locks (plugins use them, the
    // query-cache projection does), so an advisory lock would have been no boundary.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projector_claim:probe'))")
        .execute(&mut *tx)
        .await
        .expect("a plugin role can take an advisory lock");
    tx.rollback().await.unwrap();

    // The turn is a row of a host table: the role can neither lock it nor write it.
    for attempt in [
        "SELECT projection FROM outbox_claim_turns WHERE projection = 'probe' FOR UPDATE",
        "SELECT projection FROM outbox_claim_turns FOR KEY SHARE",
        "INSERT INTO outbox_claim_turns AS t (projection) VALUES ('probe')
         ON CONFLICT (projection) DO UPDATE SET projection = t.projection",
        "LOCK TABLE outbox_claim_turns IN ACCESS EXCLUSIVE MODE",
    ] {
        let mut tx = conn.begin().await.unwrap();
        let refused = sqlx::query(attempt)
            .execute(&mut *tx)
            .await
            .expect_err(attempt);
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{attempt}: {refused}");
        tx.rollback().await.unwrap();
    }
    // The host's own role holds the turn as it claims.
    let mut tx = db.pool.begin().await.unwrap();
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT projection FROM outbox_claim_turns WHERE projection = 'probe' FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(locked, vec!["probe".to_owned()]);
    tx.rollback().await.unwrap();
}
