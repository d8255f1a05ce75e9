//! Logs and traces: the one place that installs the global `tracing` subscriber, decides whether
//! spans are exported over OTLP, and names every span and attribute the host emits.
//!
//! Invariants:
//! - **No endpoint, no exporter.** Traces are exported only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and neither `OTEL_SDK_DISABLED=true` nor
//!   `OTEL_TRACES_EXPORTER=none` says otherwise). Without one no OpenTelemetry layer is installed,
//!   no span ids are generated and no per-event spans are built.
//! - **Bad settings stop the start, naming the variable**: a protocol other than OTLP/HTTP with
//!   protobuf (`OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`), an endpoint that is not `http://` (the
//!   exporter is built without TLS; run a collector next to the host), an unknown
//!   `OTEL_TRACES_SAMPLER`, a ratio sampler without a ratio in [0, 1]. (The SDK itself would fall
//!   back silently: to its default protocol, or to sampling everything.)
//! - **Export problems never stop the host.** A collector that is down or slow costs spans, not
//!   events; the SDK's warnings about it (export failed, spans dropped) are logged.
//! - **The SDK reads the standard variables itself**: `OTEL_TRACES_SAMPLER` /
//!   `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*_HEADERS` / `_TIMEOUT`,
//!   `OTEL_RESOURCE_ATTRIBUTES`. The service name is `OTEL_SERVICE_NAME`, default `projector`.
//! - **Flushed on shutdown.** [`Telemetry::shutdown`] runs after the host has stopped (SIGTERM,
//!   SIGINT, `OUTBOX_RUN_SECONDS`) and waits for the batch exporter to send what it holds.
//! - **Filters are per layer.** `RUST_LOG` filters log records only; the exporter sees every span
//!   and event at `info` or above from the `projector` crate, whatever `RUST_LOG` says.
//! - **Log correlation.** With tracing enabled, every JSON log record written inside a span
//!   carries that span's `trace_id` and `span_id` (32 and 16 lowercase hex digits, as Jaeger
//!   and the OTLP protocol spell them), also when the trace was not sampled. With tracing off
//!   JSON records carry neither field. Text logs never do.
//! - **Quiet by default.** Without `RUST_LOG` the filter is `info`, except Postgres NOTICEs sqlx
//!   relays (target `sqlx::postgres::notice`), which need `warn`.
//! - **Colour only on a terminal.** Text logs carry ANSI colour codes only when stderr is a
//!   terminal; redirected to a file, a pipe or the journal they are plain text.
//!
//! Spans (schema [`OBSERVABILITY_SCHEMA`]):
//! - `projection.process_batch`, one per claimed batch, made in `worker.rs` by [`batch_span`]
//!   and covering claim hand-over, plugin call and settle.
//! - `outbox.process`, one per event of the batch, a child of its batch span, made by
//!   [`record_events`] *when the batch's verdicts have been recorded* (the plugin handles a
//!   whole batch in one call, so there is no per-event interval to time): its start is the moment
//!   the outcome was settled, and it carries the outcome and the status the row moved to.

use crate::settings::LogFormat;
use crate::{Error, Result};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use projector_store::outbox::settle::Settled;
use projector_store::outbox::{Claim, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

/// The version of what operators query by: span names, attribute keys and their value sets,
/// and the `trace_id` / `span_id` log fields. Bumped whenever one of them is renamed or removed
/// or a value changes meaning (adding one is not a change). Stated on the "projector started"
/// record as `observability_schema`.
pub const OBSERVABILITY_SCHEMA: &str = "1";

/// The log target sqlx writes Postgres NOTICE messages to (at `info`).
const SQLX_NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "projector";

/// Name of the per-batch span.
pub const BATCH_SPAN: &str = "projection.process_batch";
/// Name of the per-event span.
pub const EVENT_SPAN: &str = "outbox.process";

/// Whether spans are exported. Set once by [`init`]; read on every batch.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// What [`describe`] reports: `off`, or the endpoint spans go to.
static DESCRIPTION: OnceLock<String> = OnceLock::new();

/// Whether traces are exported by this process.
pub fn tracing_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `off`, or the OTLP endpoint traces are sent to (for the start-up record).
pub fn describe() -> &'static str {
    DESCRIPTION.get().map(String::as_str).unwrap_or("off")
}

/// Where traces go, read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// The URL spans are posted to (`.../v1/traces`).
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
}

impl TraceExport {
    /// `None` when no exporter should run. An error for a protocol other than `http/protobuf`.
    pub fn from_env() -> Result<Option<TraceExport>> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<TraceExport>> {
        let set = |key: &str| {
            var(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let endpoint = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // As the exporter reads them: the signal-specific URL verbatim, the generic one as
            // a base that `/v1/traces` is appended to.
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        for key in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(key) {
                if protocol != "http/protobuf" {
                    return Err(Error::config(
                        key,
                        format!("projector exports traces over OTLP/HTTP with protobuf only; set it to 'http/protobuf' or unset it (got '{protocol}')"),
                    ));
                }
                break;
            }
        }
        if !endpoint.starts_with("http://") {
            let key = if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            } else {
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            };
            return Err(Error::config(
                key,
                format!("expected an http:// URL of an OTLP/HTTP receiver, e.g. http://localhost:4318 (got '{endpoint}'); projector does not speak TLS to the collector"),
            ));
        }
        if let Some(sampler) = set("OTEL_TRACES_SAMPLER") {
            check_sampler(&sampler, set("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        }
        let service_name =
            set("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        Ok(Some(TraceExport {
            endpoint,
            service_name,
        }))
    }
}

/// The SDK falls back to sampling everything on a sampler it does not know or a ratio it cannot
/// read, and says so before any log is set up: refuse those here instead.
fn check_sampler(sampler: &str, arg: Option<&str>) -> Result<()> {
    const KNOWN: &[&str] = &[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ];
    if !KNOWN.contains(&sampler) {
        return Err(Error::config(
            "OTEL_TRACES_SAMPLER",
            format!(
                "unknown sampler '{sampler}'; expected one of {}",
                KNOWN.join(", ")
            ),
        ));
    }
    if sampler.ends_with("traceidratio") {
        let ratio = arg.and_then(|a| a.parse::<f64>().ok());
        if !ratio.is_some_and(|r| (0.0..=1.0).contains(&r)) {
            return Err(Error::config(
                "OTEL_TRACES_SAMPLER_ARG",
                format!(
                    "{sampler} needs the fraction of traces to keep, between 0 and 1 (got {arg:?})"
                ),
            ));
        }
    }
    Ok(())
}

/// Flushes exported spans when the host stops. Hold it until the runtime is gone.
#[must_use = "dropping Telemetry without shutdown() loses the spans not yet exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter (waits at most 5 s). A failed last
    /// export is reported by the SDK's own warning, not by the result here.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            match provider.shutdown() {
                Ok(()) => tracing::info!("trace export stopped"),
                Err(e) => {
                    tracing::warn!(error = %e, "flushing traces failed; the last spans may be lost")
                }
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs on stderr (`RUST_LOG` filters, default `info`) and,
/// when `export` is given, the OpenTelemetry layer with an OTLP/HTTP batch exporter.
pub fn init(format: LogFormat, export: Option<&TraceExport>) -> Result<Telemetry> {
    let provider = match export {
        Some(export) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| {
                    Error::config(
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        format!("cannot build the OTLP exporter: {e}"),
                    )
                })?;
            let resource = Resource::builder()
                .with_service_name(export.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("projector"))
            // Source locations and thread names would describe this module, not the work.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(filter::Targets::new().with_target("projector", tracing::Level::INFO))
    });
    // Postgres NOTICEs (`relation "_sqlx_migrations" already exists, skipping`, ...) are the
    // server talking to sqlx, not news for the operator: shown only when RUST_LOG asks.
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{SQLX_NOTICE_TARGET}=warn")));
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
                enabled: provider.is_some(),
            })
            .with_filter(log_filter)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer)
        .try_init()
        .is_ok();
    if installed {
        if let (Some(export), Some(_)) = (export, &provider) {
            ENABLED.store(true, Ordering::Relaxed);
            let _ = DESCRIPTION.set(export.endpoint.clone());
        }
    }
    Ok(Telemetry { provider })
}

/// The JSON event format plus `trace_id` / `span_id` of the current span.
struct WithTraceIds {
    inner: format::Format<format::Json>,
    enabled: bool,
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // Read before formatting: the lookup locks the span's OpenTelemetry data, and must not
        // while the formatter holds the span's extensions.
        let ids = if self.enabled { current_ids() } else { None };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut record = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut record), event)?;
        // The JSON formatter writes one object and a newline: add the two fields before the
        // closing brace.
        match record.trim_end().strip_suffix('}') {
            Some(open) => {
                let comma = if open.trim_end().ends_with('{') {
                    ""
                } else {
                    ","
                };
                writeln!(
                    writer,
                    "{open}{comma}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
                )
            }
            None => writer.write_str(&record),
        }
    }
}

/// The OpenTelemetry ids of the current span, when there is one with a valid context.
fn current_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The `projection.process_batch` span of one claimed batch.
///
/// Attributes: `projector.claim_batch_id` (the fencing token, = `outbox_events.claim_batch_id`),
/// `projector.projection`, `projector.batch_size` (events claimed), `projector.plugin_version`
/// (the version label the batch runs on), `projector.worker_id`.
pub fn batch_span(claim: &Claim, worker_id: &str, plugin_version: &str) -> tracing::Span {
    tracing::info_span!(
        "projection.process_batch",
        projector.claim_batch_id = %claim.batch_id,
        projector.projection = %claim.projection,
        projector.batch_size = claim.events.len(),
        projector.plugin_version = %plugin_version,
        projector.worker_id = %worker_id,
    )
}

/// One `outbox.process` span per event of `claim`, children of the current (batch) span, once
/// its verdicts are recorded. `settled` is what the settle statement returned (`None` when it
/// failed): an event missing from it gets status `unsettled` (lease lost, or nothing
/// committed; the row will be claimed again).
///
/// Attributes: `projector.outbox_event_id`, `projector.event_type`, `projector.attempt`
/// (1-based), `projector.outcome` (`success` | `transient` | `deterministic`), `projector.reason`
/// (absent on success), `projector.status` (`done` | `pending` | `failed` | `unsettled`),
/// `projector.projection`. A non-success outcome sets the span status to error with the reason.
pub fn record_events(claim: &Claim, verdicts: &[Verdict], settled: Option<&[Settled]>) {
    if !tracing_enabled() {
        return;
    }
    let statuses: std::collections::HashMap<i64, &str> = settled
        .unwrap_or_default()
        .iter()
        .map(|s| (s.seq, s.status.as_str()))
        .collect();
    for (event, verdict) in claim.events.iter().zip(verdicts) {
        let status = statuses.get(&event.seq).copied().unwrap_or("unsettled");
        let (outcome, reason) = match verdict {
            Verdict::Success => ("success", None),
            Verdict::Deferred => ("deferred", None),
            Verdict::Transient { reason, .. } => ("transient", Some(reason.as_str())),
            Verdict::Deterministic { reason, .. } => ("deterministic", Some(reason.as_str())),
        };
        let span = tracing::info_span!(
            "outbox.process",
            projector.outbox_event_id = %event.id,
            projector.event_type = %event.event_type,
            projector.attempt = event.attempt,
            projector.outcome = outcome,
            projector.reason = reason,
            projector.status = status,
            projector.projection = %claim.projection,
            otel.status_description = reason,
        );
        drop(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn export(vars: &[(&str, &str)]) -> Result<Option<TraceExport>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceExport::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        assert_eq!(export(&[]).unwrap(), None);
        assert_eq!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap(),
            None
        );
        assert_eq!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap(),
            None
        );
        assert_eq!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn endpoints_resolve_as_the_exporter_reads_them() {
        let e = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(e.endpoint, "http://c:4318/v1/traces");
        assert_eq!(e.service_name, "projector");
        let e = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
            ("OTEL_SERVICE_NAME", "proj-eu"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(e.endpoint, "http://t:9/x");
        assert_eq!(e.service_name, "proj-eu");
    }

    #[test]
    fn other_protocols_and_tls_are_refused_with_the_variable_named() {
        let err = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
        assert!(export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .is_ok());
        let sampler = |name: &str, arg: Option<&str>| {
            let mut vars = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", name),
            ];
            vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
            export(&vars).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(sampler("always_on", None), Ok(()));
        assert_eq!(sampler("parentbased_traceidratio", Some("0.25")), Ok(()));
        assert!(sampler("sometimes", None)
            .unwrap_err()
            .starts_with("OTEL_TRACES_SAMPLER:"));
        for bad in [None, Some("1.5"), Some("half")] {
            assert!(sampler("traceidratio", bad)
                .unwrap_err()
                .starts_with("OTEL_TRACES_SAMPLER_ARG:"));
        }
        let err =
            export(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/v1/traces")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:"),
            "{err}"
        );
    }
}
