//! A minimal OTLP/HTTP trace receiver in the test process: accepts `POST /v1/traces` with a
//! protobuf body, decodes it with `opentelemetry-proto` as a collector would, and keeps every
//! span for the test to look at. Anything else (another path, JSON, an undecodable body) is
//! refused, so an exporter that speaks the protocol wrongly fails the test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

/// One span as the receiver got it; ids in lowercase hex (empty when absent).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// Attribute values in their text form.
    pub attributes: HashMap<String, String>,
    /// `service.name` of the resource the span came with.
    pub service_name: Option<String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
}

impl ReceivedSpan {
    /// The attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The attribute `key`; panics naming the span if it is missing.
    pub fn must(&self, key: &str) -> &str {
        self.attr(key)
            .unwrap_or_else(|| panic!("span {} has no attribute {key}: {self:?}", self.name))
    }
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: AtomicUsize,
}

/// The running receiver; stopped when dropped.
pub struct OtlpReceiver {
    pub port: u16,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens on a free port of 127.0.0.1 (on the test's runtime).
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("OTLP receiver");
        });
        OtlpReceiver {
            port,
            received,
            task,
        }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many export requests were accepted so far.
    pub fn requests(&self) -> usize {
        self.received.requests.load(Ordering::SeqCst)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap().clone()
    }

    /// The spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
    let is_protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !is_protobuf {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, content_type, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, content_type, Vec::new());
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(text)
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                spans.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    service_name: service_name.clone(),
                    status_code: status.code,
                    status_message: status.message,
                });
            }
        }
    }
    received.spans.lock().unwrap().extend(spans);
    received.requests.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        content_type,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?))))
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
