//! The operator console at `/ui`, in a real headless Chromium: it shows the numbers `projector
//! status` shows, renders a hostile payload as text, and replays a failed event with the token,
//! a reason and a confirmation (the change seen in Postgres and on the page).
//!
//! Screenshots of each step are saved in `target/test-artifacts/console-*.png`.

use crate::common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

/// What a hostile application (or whoever can write an event) puts in a payload, an error and an
/// aggregate id: markup that runs script if the page ever parses it.
const SCRIPT_TAG: &str = "<script>window.__pwned=1</script>";
const ATTRIBUTE_BREAK: &str = r#""><img src=x onerror="window.__pwned=2">"#;
const ERROR_MARKUP: &str = r#"<img src=x onerror="window.__pwned=3">"#;
const AGGREGATE_MARKUP: &str = r#"h<img src=x onerror="window.__pwned=4">"#;

/// `projector status --projection p --json`: the one projection's row.
fn status_json(db: &TestDb) -> Value {
    let out = run_projector(
        &["status", "--projection", "p", "--json"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    rows[0].clone()
}

/// The overview cell of projection `p` for `field`, as the page shows it.
async fn cell(browser: &Browser, field: &str) -> String {
    browser
        .text(&format!(r#"td[data-projection="p"][data-field="{field}"]"#))
        .await
}

/// Every number of the overview row (and the failed-by-reason table) against `status`: panics
/// naming the first that differs.
async fn assert_page_shows(browser: &Browser, status: &Value) {
    let counts = &status["counts"];
    for s in ["pending", "processing", "done", "failed", "skipped"] {
        let shown = cell(browser, &format!("counts.{s}")).await;
        assert_eq!(
            shown,
            counts[s].to_string(),
            "counts.{s}: page vs projector status"
        );
    }
    let lag = counts["pending"].as_i64().unwrap() + counts["processing"].as_i64().unwrap();
    assert_eq!(cell(browser, "lag").await, lag.to_string(), "lag");
    for field in ["stuck", "blocked"] {
        assert_eq!(
            cell(browser, field).await,
            status[field].to_string(),
            "{field}"
        );
    }
    assert_eq!(
        cell(browser, "plugin.version").await,
        status["plugin"]["version"].as_str().unwrap(),
        "plugin version"
    );
    let paused = match status["paused"]["paused_by"].as_str() {
        Some(by) => format!("yes (by {by})"),
        None => "no".to_owned(),
    };
    assert_eq!(cell(browser, "paused").await, paused, "paused");
    // The age moves with the clock: the page's (refreshed every 2 s) within 10 s of the CLI's.
    let age = cell(browser, "oldest_pending_age_seconds").await;
    match status["oldest_pending_age_seconds"].as_f64() {
        Some(cli) => {
            let shown: f64 = age
                .trim_end_matches(" s")
                .parse()
                .expect("an age in seconds");
            assert!(
                (shown - cli).abs() < 10.0,
                "oldest pending: page {shown}, cli {cli}"
            );
        }
        None => assert_eq!(age, "-"),
    }
    let reasons = status["failed_by_reason"].as_object().unwrap();
    let shown = browser
        .eval(
            r#"return [...document.querySelectorAll('td[data-projection="p"][data-field^="failed_by_reason."]')]
                 .map(td => [td.dataset.field.slice("failed_by_reason.".length), td.textContent]);"#,
            vec![],
        )
        .await;
    let shown: Vec<(String, String)> = serde_json::from_value(shown).unwrap();
    let expected: Vec<(String, String)> = reasons
        .iter()
        .map(|(r, n)| (r.clone(), n.to_string()))
        .collect();
    assert_eq!(
        shown, expected,
        "failed by reason: page vs projector status"
    );
}

/// Waits until the page's overview shows `failed` failed events (it refreshes every 2 s).
async fn wait_page_failed(browser: &Browser, failed: i64) {
    browser
        .wait_true(
            &format!("the page shows {failed} failed"),
            PATIENCE,
            &format!(
                r#"const td = document.querySelector('td[data-projection="p"][data-field="counts.failed"]');
                   return td !== null && td.textContent === "{failed}";"#
            ),
        )
        .await;
}

/// Confirms the open dialog with `reason` (after checking that an empty reason is refused).
async fn confirm_with(browser: &Browser, reason: &str) {
    browser
        .wait_true(
            "the dialog worked out what will happen",
            PATIENCE,
            "return document.getElementById('confirm').open && !document.getElementById('confirm-ok').disabled;",
        )
        .await;
    browser.click("#confirm-ok").await;
    let refused = browser.text("#confirm-error").await;
    assert!(refused.contains("reason is required"), "{refused}");
    let input = browser.wait_for("#confirm-reason").await;
    input.send_keys(reason).await.unwrap();
    let by = browser.wait_for("#confirm-by").await;
    by.clear().await.unwrap();
    by.send_keys("console-test").await.unwrap();
    browser.click("#confirm-ok").await;
    browser
        .wait_true(
            "the dialog closed",
            PATIENCE,
            "return !document.getElementById('confirm').open;",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_what_projector_status_shows_keeps_hostile_payloads_as_text_and_replays_with_the_token(
) {
    let db = TestDb::new().await;
    db.migrate();
    let fail = |reason: &str| json!({"outcome": "deterministic", "reason": reason});
    let hostile = json!({
        "outcome": "deterministic", "reason": "xss_probe", "message": ERROR_MARKUP,
        "title": SCRIPT_TAG, "note": ATTRIBUTE_BREAK,
    });
    let mut events: Vec<NewEvent> = (0..4)
        .map(|i| NewEvent::new("p", format!("d{i}"), json!({"outcome": "success"})))
        .collect();
    events.push(NewEvent::new("p", "f0", fail("bad_payload")));
    events.push(NewEvent::new("p", "f1", fail("bad_payload")));
    events.push(NewEvent::new("p", "f2", fail("es_mapping")));
    events.push(NewEvent::new("p", AGGREGATE_MARKUP, hostile));
    // Behind the failed ones of their aggregates: blocked.
    events.push(NewEvent::new("p", "f0", json!({"outcome": "success"})));
    events.push(NewEvent::new(
        "p",
        AGGREGATE_MARKUP,
        json!({"outcome": "success"}),
    ));
    let ids = insert_events(&db.pool, &events).await;
    let hostile_id = ids[7];
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "p.toml",
        format!(
            "[[projection]]\nname = \"p\"\nplugin = \"{}\"\n",
            plugin("scripted").display()
        ),
    );
    let mut host = Host::start(
        &db.url,
        &["--config", config.to_str().unwrap()],
        &[("OUTBOX_ADMIN_TOKEN", TOKEN)],
    );
    host.wait_ready(PATIENCE);
    wait_until("4 done and 4 failed", PATIENCE, async || {
        let c = status_counts(&db.pool, "p").await;
        (c.done, c.failed, c.pending, c.processing) == (4, 4, 2, 0)
    })
    .await;

    let browser = Browser::start().await;
    let ui = format!("http://127.0.0.1:{}/ui", host.port);
    browser.goto(&ui).await;
    // Violations of the policy would mean markup from the data reached the parser.
    browser
        .eval(
            "window.__violations = []; document.addEventListener('securitypolicyviolation', \
             e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));",
            vec![],
        )
        .await;
    wait_page_failed(&browser, 4).await;

    // The overview shows exactly what `projector status` shows.
    let status = status_json(&db);
    assert_eq!(status["counts"]["failed"], 4, "{status}");
    assert_eq!(status["blocked"], 2, "{status}");
    assert_page_shows(&browser, &status).await;
    // The chart has points from the host's history.
    browser
        .wait_true(
            "the chart has a lag line",
            PATIENCE,
            "const l = document.querySelector('#chart polyline.lag'); return l !== null && l.getAttribute('points').length > 0;",
        )
        .await;
    browser.screenshot("console-overview").await;

    // Event contents need the token: the page says so until one is given.
    browser
        .click(r#"button[data-action="list"][data-reason="xss_probe"]"#)
        .await;
    let notice = browser.text("#notice").await;
    assert!(notice.contains("token"), "{notice}");
    browser
        .wait_for("#token")
        .await
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser.click("#token-use").await;
    browser
        .wait_true(
            "the token is accepted",
            PATIENCE,
            "return document.getElementById('token-state').textContent === 'token accepted';",
        )
        .await;

    // The hostile event: listed, opened, and everything it carries is text.
    browser
        .click(r#"button[data-action="list"][data-reason="xss_probe"]"#)
        .await;
    browser.click(r#"button[data-action="open"]"#).await;
    browser
        .wait_true(
            "the event is open",
            PATIENCE,
            r#"const d = document.querySelector('#event-fields dd[data-field="status"]');
               return d !== null && d.textContent === "failed";"#,
        )
        .await;
    let payload = browser.text("#event-payload").await;
    assert!(payload.contains(SCRIPT_TAG), "{payload}");
    assert!(
        payload.contains(r#"<img src=x onerror=\"window.__pwned=2\">"#),
        "{payload}"
    );
    assert_eq!(browser.text("#event-error").await, ERROR_MARKUP);
    let listed = browser.text("#event-list tbody").await;
    assert!(listed.contains(AGGREGATE_MARKUP), "{listed}");
    assert!(browser
        .text("#event-seq")
        .await
        .contains(&hostile_id.to_string()));
    let probe = "return {pwned: window.__pwned === undefined ? null : window.__pwned, \
                 imgs: document.querySelectorAll('img').length, \
                 scripts: document.scripts.length, violations: window.__violations};";
    assert_eq!(
        browser.eval(probe, vec![]).await,
        json!({"pwned": null, "imgs": 0, "scripts": 1, "violations": []}),
        "the hostile strings stayed text: no element, no script, nothing blocked"
    );
    browser.screenshot("console-hostile-event").await;

    // Positive controls: the probes can fail. Parsed as markup in the console, the string makes
    // an element and the policy blocks its handler (a violation); in a page without the policy
    // the same string runs.
    let inject = "const d = document.createElement('div'); d.id = 'control'; \
                  d.innerHTML = arguments[0]; document.body.append(d);";
    browser.eval(inject, vec![json!(ATTRIBUTE_BREAK)]).await;
    browser
        .wait_true(
            "the policy reports the injected handler",
            PATIENCE,
            "return window.__violations.length > 0;",
        )
        .await;
    let controlled = browser.eval(probe, vec![]).await;
    assert_eq!(controlled["imgs"], 1, "{controlled}");
    assert_eq!(
        controlled["pwned"],
        Value::Null,
        "the policy stopped it: {controlled}"
    );
    browser
        .eval(
            "document.getElementById('control').remove(); window.__violations = [];",
            vec![],
        )
        .await;
    browser.goto("about:blank").await;
    browser.eval(inject, vec![json!(ATTRIBUTE_BREAK)]).await;
    browser
        .wait_true(
            "the injected handler runs where no policy applies",
            PATIENCE,
            "return window.__pwned === 2;",
        )
        .await;

    // Pause, then replay the hostile event: each with a reason and a confirmation.
    browser.goto(&ui).await;
    browser
        .wait_for("#token")
        .await
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser.click("#token-use").await;
    browser
        .wait_true(
            "the token is accepted again",
            PATIENCE,
            "return document.getElementById('token-state').textContent === 'token accepted';",
        )
        .await;
    browser.click("#pause").await;
    confirm_with(&browser, "hold the projection while the plugin is fixed").await;
    let pause: (String, Option<String>) =
        sqlx::query_as("SELECT paused_by, reason FROM projection_pauses WHERE projection = 'p'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        pause,
        (
            "console-test".to_owned(),
            Some("hold the projection while the plugin is fixed".to_owned())
        )
    );

    browser
        .click(r#"button[data-action="list"][data-reason="xss_probe"]"#)
        .await;
    browser.click(r#"button[data-action="open"]"#).await;
    browser
        .wait_true(
            "the event is open again",
            PATIENCE,
            r#"const d = document.querySelector('#event-fields dd[data-field="status"]');
               return d !== null && d.textContent === "failed" && !document.getElementById('event-replay').disabled;"#,
        )
        .await;
    browser.click("#event-replay").await;
    browser
        .wait_true(
            "the dry run counted one event",
            PATIENCE,
            "return document.getElementById('confirm-what').textContent.startsWith('Dry run: 1 failed event');",
        )
        .await;
    confirm_with(&browser, "payload checked by hand").await;

    // Postgres: the event is pending again, replayed by the console's operator, and audited.
    let row: (String, i32, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, replay_count, last_replayed_by, last_replayed_reason FROM outbox_events WHERE id = $1",
    )
    .bind(hostile_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "pending".to_owned(),
            1,
            Some("console-test".to_owned()),
            Some("payload checked by hand".to_owned())
        )
    );
    let audit: Vec<(bool, Vec<uuid::Uuid>)> = sqlx::query_as(
        "SELECT dry_run, event_ids FROM replay_audit WHERE action = 'replay' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        [(true, vec![hostile_id]), (false, vec![hostile_id])],
        "the preview (dry) and the replay"
    );
    // The page: the event's status and history, and the overview, which matches the CLI again.
    browser
        .wait_true(
            "the page shows the event pending with its replay",
            PATIENCE,
            r#"const d = document.querySelector('#event-fields dd[data-field="status"]');
               return d !== null && d.textContent === "pending"
                 && document.querySelectorAll('#event-history tbody tr').length === 2;"#,
        )
        .await;
    wait_page_failed(&browser, 3).await;
    let status = status_json(&db);
    assert_eq!(status["counts"]["failed"], 3, "{status}");
    assert_page_shows(&browser, &status).await;
    assert_eq!(
        browser.eval(probe, vec![]).await["pwned"],
        Value::Null,
        "still nothing ran"
    );
    browser.screenshot("console-replayed").await;

    // Resume: the hosts claim again (the scripted payload still fails, deterministically).
    browser.click("#resume").await;
    confirm_with(&browser, "fix verified").await;
    wait_until("the replayed event failed again", PATIENCE, async || {
        status_counts(&db.pool, "p").await.failed == 4
    })
    .await;
    wait_page_failed(&browser, 4).await;
    browser.close().await;
}
