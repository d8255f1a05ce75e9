//! Tracing: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every batch becomes a
//! `projection.process_batch` span and every event in it an `outbox.process` child carrying its
//! id, attempt, outcome, reason and resulting status; the spans reach a real OTLP/HTTP receiver
//! (started by the test) when the host shuts down, the JSON logs carry the same trace and span
//! ids, and the sampler settings are honoured. Without an endpoint nothing is traced.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

/// Export only at shutdown (the schedule delay is far longer than the test), so the spans the
/// receiver holds after the host exited prove the flush on SIGTERM.
const FLUSH_ONLY_AT_SHUTDOWN: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "600000");

/// A host on the scripted plugin for projection `p`, with `env`.
fn scripted_host(db: &TestDb, env: &[(&str, &str)]) -> Host {
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        env,
    );
    host.wait_ready(PATIENCE);
    host
}

/// One event of each outcome, in separate aggregates, in one insert: `(success, transient,
/// deterministic)` ids.
async fn one_of_each_outcome(db: &TestDb) -> (Uuid, Uuid, Uuid) {
    let ids = insert_events(
        &db.pool,
        &[
            NewEvent::new("p", "doc-1", json!({"outcome": "success"})).event_type("doc.indexed"),
            NewEvent::new(
                "p",
                "doc-2",
                json!({"outcome": "transient", "reason": "es_connect"}),
            )
            .event_type("doc.retried"),
            NewEvent::new(
                "p",
                "doc-3",
                json!({"outcome": "deterministic", "reason": "bad_payload"}),
            )
            .event_type("doc.rejected"),
        ],
    )
    .await;
    (ids[0], ids[1], ids[2])
}

/// `(outcome, reason, status)` of one traced attempt.
type Traced = (String, Option<String>, String);

/// Stops the host with SIGTERM and checks it exits cleanly.
fn stop(host: &mut Host) {
    host.sigterm();
    let status = host.wait_exit(secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

/// The log records written inside a batch, by message: those carry `claim_batch_id`.
fn batch_records<'a>(records: &'a [Value], message: &str) -> Vec<&'a Value> {
    records_with_message(records, message)
        .into_iter()
        .filter(|r| field_str(r, "claim_batch_id").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_events_reach_an_otlp_receiver_as_linked_spans_with_their_outcomes() {
    let db = TestDb::new().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mut host = scripted_host(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            FLUSH_ONLY_AT_SHUTDOWN,
        ],
    );
    let (success, transient, deterministic) = one_of_each_outcome(&db).await;

    let counts = wait_settled(&db.pool, "p", 3, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (1, 2), "{counts:?}");
    assert_eq!(
        receiver.requests(),
        0,
        "nothing is exported before the schedule delay or shutdown"
    );
    stop(&mut host);

    // What the database says happened.
    let rows: HashMap<Uuid, EventRow> = events(&db.pool, "p")
        .await
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let version = rows[&success]
        .projection_version
        .clone()
        .expect("settled rows are stamped with the plugin version");

    // Batches: roots, one per claim, each naming its claim and counting its children.
    let batches = receiver.spans_named("projection.process_batch");
    let children = receiver.spans_named("outbox.process");
    assert!(!batches.is_empty(), "no batch span received");
    let mut by_claim = HashMap::new();
    for batch in &batches {
        assert_eq!(
            batch.parent_span_id, "",
            "a batch span is a root: {batch:?}"
        );
        assert_eq!(batch.service_name.as_deref(), Some("projector"));
        assert_eq!(batch.must("projector.projection"), "p");
        assert_eq!(batch.must("projector.worker_id"), host.worker_id);
        assert_eq!(batch.must("projector.plugin_version"), version);
        let claim = batch.must("projector.claim_batch_id").to_owned();
        let kids = children
            .iter()
            .filter(|c| c.parent_span_id == batch.span_id)
            .collect::<Vec<_>>();
        assert_eq!(
            batch.must("projector.batch_size"),
            kids.len().to_string(),
            "batch {claim}: one outbox.process child per claimed event"
        );
        for kid in kids {
            assert_eq!(
                kid.trace_id, batch.trace_id,
                "a child shares its batch's trace"
            );
        }
        assert!(
            by_claim.insert(claim.clone(), batch.clone()).is_none(),
            "claim {claim} has two batch spans"
        );
    }

    // Events: every attempt of every event, with its outcome and the status it led to.
    let mut attempts: HashMap<Uuid, BTreeMap<i64, Traced>> = HashMap::new();
    for child in &children {
        assert_eq!(child.service_name.as_deref(), Some("projector"));
        let parent = batches
            .iter()
            .find(|b| b.span_id == child.parent_span_id)
            .unwrap_or_else(|| panic!("outbox.process without its batch span: {child:?}"));
        let id: Uuid = child.must("projector.outbox_event_id").parse().unwrap();
        let row = &rows[&id];
        assert_eq!(child.must("projector.event_type"), row.event_type);
        assert_eq!(child.must("projector.projection"), "p");
        let outcome = child.must("projector.outcome").to_owned();
        let reason = child.attr("projector.reason").map(str::to_owned);
        match &reason {
            None => assert_eq!(child.status_code, 0, "success leaves the status unset"),
            Some(r) => {
                assert_eq!(child.status_code, 2, "a failed attempt is an error span");
                assert_eq!(&child.status_message, r);
            }
        }
        let attempt: i64 = child.must("projector.attempt").parse().unwrap();
        let status = child.must("projector.status").to_owned();
        if attempt == i64::from(row.attempts) {
            // The last attempt is the claim the row still names.
            assert_eq!(
                parent.must("projector.claim_batch_id"),
                row.claim_batch_id.unwrap().to_string(),
                "event {id}: last attempt under the claim outbox_events names"
            );
            assert_eq!(status, row.status, "event {id}: span status = row status");
        }
        let previous = attempts
            .entry(id)
            .or_default()
            .insert(attempt, (outcome, reason, status));
        assert!(
            previous.is_none(),
            "event {id} attempt {attempt} traced twice"
        );
    }
    let expect = |outcome: &str, reason: Option<&str>, status: &str| {
        (
            outcome.to_owned(),
            reason.map(str::to_owned),
            status.to_owned(),
        )
    };
    assert_eq!(
        attempts[&success],
        BTreeMap::from([(1, expect("success", None, "done"))])
    );
    assert_eq!(
        attempts[&deterministic],
        BTreeMap::from([(1, expect("deterministic", Some("bad_payload"), "failed"))])
    );
    assert_eq!(
        attempts[&transient],
        BTreeMap::from([
            (1, expect("transient", Some("es_connect"), "pending")),
            (2, expect("transient", Some("es_connect"), "pending")),
            (3, expect("transient", Some("es_connect"), "failed")),
        ]),
        "OUTBOX_MAX_ATTEMPTS=3: two retries, then terminal"
    );
    assert_eq!(attempts.len(), 3, "no spans for events that do not exist");

    // Logs: the records written inside a batch carry that batch span's ids.
    let records = host.log_lines();
    let started = records_with_message(&records, "projector started");
    assert_eq!(started.len(), 1);
    assert_eq!(
        field_str(started[0], "observability_schema").as_deref(),
        Some("1")
    );
    assert_eq!(
        field_str(started[0], "tracing"),
        Some(format!("{endpoint}/v1/traces"))
    );
    assert_eq!(
        field_str(started[0], "trace_id"),
        None,
        "outside a span there is nothing to correlate"
    );
    let retries = batch_records(&records, "retry scheduled");
    let terminal = batch_records(&records, "event failed (terminal)");
    assert_eq!((retries.len(), terminal.len()), (2, 2));
    for record in retries.into_iter().chain(terminal) {
        let claim = field_str(record, "claim_batch_id").unwrap();
        let batch = by_claim
            .get(&claim)
            .unwrap_or_else(|| panic!("log names claim {claim}, which has no batch span"));
        assert_eq!(
            field_str(record, "trace_id").as_deref(),
            Some(batch.trace_id.as_str()),
            "{record}"
        );
        assert_eq!(
            field_str(record, "span_id").as_deref(),
            Some(batch.span_id.as_str()),
            "{record}"
        );
    }
}

/// One host exporting to a fresh receiver with `OTEL_TRACES_SAMPLER=traceidratio` and
/// `OTEL_TRACES_SAMPLER_ARG=ratio`, flushing only at shutdown, over one event of each outcome:
/// the spans the receiver got and the host's log records.
async fn sampled_at(ratio: &str) -> (Vec<ReceivedSpan>, Vec<Value>) {
    let db = TestDb::new().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mut host = scripted_host(
        &db,
        &[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &format!("{endpoint}/v1/traces"),
            ),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", ratio),
            ("OTEL_SERVICE_NAME", "projector-eu"),
            FLUSH_ONLY_AT_SHUTDOWN,
        ],
    );
    one_of_each_outcome(&db).await;
    wait_settled(&db.pool, "p", 3, PATIENCE).await;
    stop(&mut host);
    (receiver.spans(), host.log_lines())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampler_settings_are_honoured_and_logs_still_carry_trace_ids() {
    // The positive control: the same setup with a ratio of 1 keeps every trace, so the export
    // path this test relies on works and a count of 0 below means the sampler dropped them.
    let (kept, _) = sampled_at("1").await;
    let batches = kept
        .iter()
        .filter(|s| s.name == "projection.process_batch")
        .count();
    assert!(
        batches >= 1,
        "with a ratio of 1 the batches' spans are exported: {kept:?}"
    );
    let attempts = kept.iter().filter(|s| s.name == "outbox.process").count();
    assert!(
        attempts >= 3,
        "with a ratio of 1 every attempt's span is exported ({attempts}): {kept:?}"
    );
    assert!(
        kept.iter()
            .all(|s| s.service_name.as_deref() == Some("projector-eu")),
        "{kept:?}"
    );

    // A ratio of 0 keeps nothing; were the argument ignored, the SDK would keep all.
    let (spans, records) = sampled_at("0").await;
    eprintln!(
        "spans exported: {} with a ratio of 1 ({batches} batches), {} with a ratio of 0",
        kept.len(),
        spans.len()
    );
    assert_eq!(spans.len(), 0, "{spans:?}");
    let retries = batch_records(&records, "retry scheduled");
    assert_eq!(retries.len(), 2);
    for record in retries {
        let trace_id = field_str(record, "trace_id").expect("trace_id on an unsampled trace");
        assert_eq!(trace_id.len(), 32, "{record}");
        assert_ne!(trace_id, "0".repeat(32), "{record}");
        assert_eq!(field_str(record, "span_id").map(|s| s.len()), Some(16));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_traced_and_logs_carry_no_trace_ids() {
    let db = TestDb::new().await;
    let mut host = scripted_host(&db, &[("OTEL_TRACES_SAMPLER", "always_on")]);
    one_of_each_outcome(&db).await;
    wait_settled(&db.pool, "p", 3, PATIENCE).await;
    stop(&mut host);

    let records = host.log_lines();
    let started = records_with_message(&records, "projector started");
    assert_eq!(field_str(started[0], "tracing").as_deref(), Some("off"));
    assert_eq!(
        field_str(started[0], "observability_schema").as_deref(),
        Some("1")
    );
    let retries = batch_records(&records, "retry scheduled");
    assert_eq!(retries.len(), 2);
    for record in retries {
        assert_eq!(field_str(record, "trace_id"), None, "{record}");
        assert_eq!(field_str(record, "span_id"), None, "{record}");
    }
    assert!(
        records_with_message(&records, "trace export stopped").is_empty(),
        "no exporter, nothing to flush"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_spans_not_events_and_is_reported() {
    let db = TestDb::new().await;
    // A port nothing listens on.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut host = scripted_host(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &nowhere),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    );
    one_of_each_outcome(&db).await;
    let counts = wait_settled(&db.pool, "p", 3, PATIENCE).await;
    assert_eq!((counts.done, counts.failed), (1, 2), "{counts:?}");
    wait_until(
        "the host reports that exporting failed",
        PATIENCE,
        async || {
            host.log_lines().iter().any(|r| {
                matches!(field_str(r, "level").as_deref(), Some("WARN" | "ERROR"))
                    && field_str(r, "target").is_some_and(|t| t.starts_with("opentelemetry"))
            })
        },
    )
    .await;
    let stopping = std::time::Instant::now();
    stop(&mut host);
    assert!(
        stopping.elapsed() < secs(20),
        "an unreachable collector held shutdown for {:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_protocol_other_than_http_protobuf_is_refused_at_start_up() {
    let out = run_projector(
        &["run", "--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(
        text.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && text.contains("http/protobuf"),
        "{text}"
    );
}
