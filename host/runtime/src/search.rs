//! The `search` capability: bulk writes to the search cluster (`ELASTIC_URL`) on a plugin's
//! behalf.
//!
//! Invariants:
//! - One client per host, built once from [`ElasticSettings`] and shared by every projection and
//!   instance (its HTTP connections are pooled); plugins never see the URL or the credentials.
//! - A projection touches only the indices it was granted (`[projection.grants] search_indices`):
//!   a request naming any other index is refused whole (`forbidden`) before anything is sent, and
//!   so is a malformed one (`invalid`): a bulk request either goes out complete or not at all.
//! - The call blocks the plugin (the component call is synchronous) but never past the batch's
//!   deadline: the request timeout is nine tenths of the batch's remaining budget, at most
//!   [`MAX_REQUEST_TIME`].
//!   Epoch interruption cannot stop a host call, so this bound is what keeps a hung server from
//!   holding a batch past `OUTBOX_MAX_PROCESSING_SECONDS`.
//! - `refresh` is left unset: making writes visible to search is the cluster's business.

use crate::capability::{BatchScope, Capability};
use crate::Error;
use elasticsearch::auth::Credentials;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::{BulkParts, Elasticsearch};
use projector_core::spec::{ElasticSettings, Grants};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        interfaces: "import projector:plugin/search@0.1.0;",
    });
}

pub use generated::projector::plugin::search::{Action, BulkError, ItemResult, Operation};
use generated::projector::plugin::search::{Host, HttpFailure};

/// The longest a bulk request may take, even when the batch has more time left.
pub const MAX_REQUEST_TIME: Duration = Duration::from_secs(30);

/// How much of an error body goes back to the plugin.
const MAX_MESSAGE_BYTES: usize = 1000;

/// The `search` capability. Whether it is granted is checked at load (on the component's
/// imports) and per operation (the granted indices).
pub struct Search;

/// Where a granted plugin's bulk requests go: the search cluster in `projector run`
/// ([`SearchAccess`]), an in-memory index in the test kit.
pub trait SearchBackend: Send + Sync {
    /// One bulk request of `operations` (not empty): one result per operation, in order.
    fn bulk(
        &self,
        scope: &BatchScope,
        operations: &[Operation],
    ) -> Result<Vec<ItemResult>, BulkError>;
}

/// An instance's `search` context: its backend when the projection is granted `search`.
pub struct SearchCtx {
    backend: Option<Arc<dyn SearchBackend>>,
}

impl SearchCtx {
    /// The context of an instance whose requests go to `backend` (`None`: not granted).
    pub fn new(backend: Option<Arc<dyn SearchBackend>>) -> Self {
        SearchCtx { backend }
    }
}

/// What `search` calls see: the context and the batch.
pub struct SearchView<'a> {
    /// The instance's context.
    pub ctx: &'a mut SearchCtx,
    /// The batch being handled.
    pub scope: &'a BatchScope,
}

impl HasData for Search {
    type Data<'a> = SearchView<'a>;
}

impl Capability for Search {
    const NAME: &'static str = "search";
    const INTERFACE: &'static str = "projector:plugin/search@";
    type Data<'a> = SearchView<'a>;

    fn granted(grants: &Grants) -> bool {
        grants.search()
    }

    fn add_to_linker<T: 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> SearchView<'_>,
    ) -> wasmtime::Result<()> {
        generated::projector::plugin::search::add_to_linker::<T, Search>(linker, get)
    }
}

/// The host's connection to the search cluster, shared by every projection granted `search`.
#[derive(Clone)]
pub struct SearchClient {
    es: Elasticsearch,
    /// The runtime that drives the HTTP requests; plugin calls run on its blocking threads.
    runtime: tokio::runtime::Handle,
}

impl SearchClient {
    /// Builds the client for `settings`. Call it inside the host's tokio runtime.
    pub fn new(settings: &ElasticSettings) -> Result<Self, Error> {
        let url = Url::parse(&settings.url)
            .map_err(|e| Error::config("ELASTIC_URL", format!("`{}`: {e}", settings.url)))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url));
        if let Some(key) = &settings.api_key {
            builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
        } else if let Some((user, password)) = &settings.basic_auth {
            builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
        }
        let transport = builder.build().map_err(|e| {
            Error::config(
                "ELASTIC_URL",
                format!("cannot build the search client: {e}"),
            )
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            anyhow::anyhow!("the search client needs the host's tokio runtime: {e}")
        })?;
        Ok(SearchClient {
            es: Elasticsearch::new(transport),
            runtime,
        })
    }
}

impl SearchClient {
    /// One administrative request (index creation, mappings, aliases) with a JSON body: the
    /// status and the decoded answer. For the host itself (rebuilds), never for plugins.
    pub async fn admin(
        &self,
        method: elasticsearch::http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Error> {
        let response = self
            .es
            .send(
                method,
                path,
                elasticsearch::http::headers::HeaderMap::new(),
                Option::<&()>::None,
                body.map(elasticsearch::http::request::JsonBody::new),
                Some(MAX_REQUEST_TIME),
            )
            .await
            .map_err(|e| {
                Error::config(
                    "ELASTIC_URL",
                    format!("{path}: {}", shorten(&error_chain(&e))),
                )
            })?;
        let status = response.status_code().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// One projection's access to the cluster: the shared client, the indices it was granted, and
/// (for a zero-downtime rebuild) where writes to a granted index really go.
#[derive(Clone)]
pub struct SearchAccess {
    client: SearchClient,
    grants: Arc<Grants>,
    redirect: Arc<BTreeMap<String, String>>,
}

impl SearchAccess {
    /// Access for a projection granted `grants`; writes to an index named in `redirect` go to
    /// the index it maps to (the grant is checked on the name the plugin used).
    pub fn new(client: SearchClient, grants: Grants, redirect: BTreeMap<String, String>) -> Self {
        SearchAccess {
            client,
            grants: Arc::new(grants),
            redirect: Arc::new(redirect),
        }
    }
}

impl Host for SearchView<'_> {
    fn bulk(&mut self, operations: Vec<Operation>) -> Result<Vec<ItemResult>, BulkError> {
        let Some(backend) = &self.ctx.backend else {
            return Err(BulkError::Forbidden(format!(
                "projection `{}` is not granted the `search` capability",
                self.scope.projection
            )));
        };
        if operations.is_empty() {
            return Ok(Vec::new());
        }
        backend.bulk(self.scope, &operations)
    }
}

/// The host's `search`: the request checked against the grants and sent to the cluster within
/// the batch's deadline.
impl SearchBackend for SearchAccess {
    fn bulk(
        &self,
        scope: &BatchScope,
        operations: &[Operation],
    ) -> Result<Vec<ItemResult>, BulkError> {
        let body = request_body(operations, &self.grants, &self.redirect, &scope.projection)?;
        // Only inside `handle`: that runs on a blocking thread, where waiting for the request is
        // allowed (in `describe` or an initialiser we may be on the runtime's own threads).
        let Some(deadline) = scope.deadline else {
            return Err(BulkError::Invalid(
                "`search` can only be used while handling a batch".into(),
            ));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BulkError::Connect(
                "the batch deadline passed before the request was sent".into(),
            ));
        }
        // A tenth of what is left stays with the plugin, to classify the timeout (`connect`)
        // before the epoch deadline interrupts it.
        let timeout = (left - left / 10).min(MAX_REQUEST_TIME);
        let started = Instant::now();
        let result =
            self.client
                .runtime
                .block_on(send(&self.client.es, body, timeout, operations.len()));
        tracing::debug!(
            projection = %scope.projection,
            operations = operations.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            ok = result.is_ok(),
            "search bulk request"
        );
        result
    }
}

/// Checks `operations` as the host's backend ([`SearchAccess`]) does before sending (grants, index names, documents),
/// for the test kit's stand-in.
pub fn validate(
    operations: &[Operation],
    grants: &Grants,
    projection: &str,
) -> Result<(), BulkError> {
    request_body(operations, grants, &BTreeMap::new(), projection).map(|_| ())
}

/// The NDJSON lines of a `_bulk` request for `operations`, or why it must not be sent.
fn request_body(
    operations: &[Operation],
    grants: &Grants,
    redirect: &BTreeMap<String, String>,
    projection: &str,
) -> Result<Vec<Value>, BulkError> {
    let mut lines = Vec::with_capacity(operations.len() * 2);
    for (i, op) in operations.iter().enumerate() {
        if !grants.allows_index(&op.index) {
            return Err(BulkError::Forbidden(format!(
                "operation {i}: index `{}` is not granted to projection `{projection}` \
                 (granted: {})",
                op.index,
                grants.search_indices.join(", ")
            )));
        }
        check_index_name(&op.index)
            .map_err(|e| BulkError::Invalid(format!("operation {i}: {e}")))?;
        if op.id.is_empty() || op.id.len() > 512 {
            return Err(BulkError::Invalid(format!(
                "operation {i}: the document id must be 1-512 bytes"
            )));
        }
        let (name, external) = match op.action {
            Action::Index => ("index", true),
            Action::Create => ("create", true),
            Action::Update => ("update", false),
            Action::Delete => ("delete", true),
        };
        let mut meta = Map::new();
        meta.insert(
            "_index".into(),
            json!(redirect.get(&op.index).unwrap_or(&op.index)),
        );
        meta.insert("_id".into(), json!(op.id));
        if let Some(version) = op.version {
            if !external {
                return Err(BulkError::Invalid(format!(
                    "operation {i}: an external version cannot be given for `update`"
                )));
            }
            if version < 0 {
                return Err(BulkError::Invalid(format!(
                    "operation {i}: the external version must not be negative, got {version}"
                )));
            }
            meta.insert("version".into(), json!(version));
            meta.insert("version_type".into(), json!("external"));
        }
        lines.push(json!({ name: meta }));
        match (op.action, &op.document) {
            (Action::Delete, None) => {}
            (Action::Delete, Some(_)) => {
                return Err(BulkError::Invalid(format!(
                    "operation {i}: `delete` takes no document"
                )))
            }
            (_, None) => {
                return Err(BulkError::Invalid(format!(
                    "operation {i}: `{name}` needs a document"
                )))
            }
            (action, Some(text)) => {
                let doc = match serde_json::from_str::<Value>(text) {
                    Ok(doc @ Value::Object(_)) => doc,
                    Ok(_) => {
                        return Err(BulkError::Invalid(format!(
                            "operation {i}: the document is not a JSON object"
                        )))
                    }
                    Err(e) => {
                        return Err(BulkError::Invalid(format!(
                            "operation {i}: the document is not JSON: {e}"
                        )))
                    }
                };
                // Re-serialised compactly, so a pretty-printed document cannot break NDJSON.
                lines.push(match action {
                    Action::Update => json!({ "doc": doc }),
                    _ => doc,
                });
            }
        }
    }
    Ok(lines)
}

/// The index names Elasticsearch and OpenSearch accept for writes; anything else would be
/// refused by the server or (a comma, a wildcard) could mean more than one index.
fn check_index_name(index: &str) -> Result<(), String> {
    let bad_start = index.starts_with(['_', '-', '+']) || index == "." || index == "..";
    let bad_char = index.chars().any(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' | ' '
        ) || c.is_uppercase()
    });
    if index.is_empty() || index.len() > 255 || bad_start || bad_char {
        return Err(format!("`{index}` is not a valid index name"));
    }
    Ok(())
}

async fn send(
    es: &Elasticsearch,
    body: Vec<Value>,
    timeout: Duration,
    expected: usize,
) -> Result<Vec<ItemResult>, BulkError> {
    let response = es
        .bulk(BulkParts::None)
        .body(
            body.into_iter()
                .map(elasticsearch::http::request::JsonBody::new)
                .collect(),
        )
        .request_timeout(timeout)
        .send()
        .await
        .map_err(|e| BulkError::Connect(shorten(&error_chain(&e))))?;
    let status = response.status_code().as_u16();
    if !(200..300).contains(&status) {
        let text = response.text().await.unwrap_or_default();
        return Err(BulkError::Status(HttpFailure {
            status,
            message: shorten(&text),
        }));
    }
    let text = response
        .text()
        .await
        .map_err(|e| BulkError::Connect(shorten(&error_chain(&e))))?;
    let unreadable = |why: String| {
        BulkError::Status(HttpFailure {
            status,
            message: shorten(&format!("unreadable bulk response ({why}): {text}")),
        })
    };
    let parsed: Value = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    let items = parsed
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| unreadable("no `items`".into()))?;
    if items.len() != expected {
        return Err(unreadable(format!(
            "{} items for {expected} operations",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| item_result(item).ok_or_else(|| unreadable(format!("bad item {item}"))))
        .collect()
}

/// `{"index": {"status": 201, ...}}` or `{"delete": {"status": 404, "error": {...}}}`.
fn item_result(item: &Value) -> Option<ItemResult> {
    let inner = item.as_object()?.values().next()?;
    let status = u16::try_from(inner.get("status")?.as_u64()?).ok()?;
    let (error_type, error_reason) = match inner.get("error") {
        None | Some(Value::Null) => (String::new(), String::new()),
        Some(Value::String(reason)) => (String::new(), reason.clone()),
        Some(error) => {
            let field = |k: &str| {
                error
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("type"), shorten(&field("reason")))
        }
    };
    Some(ItemResult {
        status,
        error_type,
        error_reason,
    })
}

/// An error with its causes: reqwest's top-level message alone ("error sending request") does
/// not say that the connection was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn shorten(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let cut = (0..=MAX_MESSAGE_BYTES)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(indices: &[&str]) -> Grants {
        Grants {
            search_indices: indices.iter().map(|s| s.to_string()).collect(),
            ..Grants::default()
        }
    }

    fn op(action: Action, index: &str, document: Option<&str>, version: Option<i64>) -> Operation {
        Operation {
            action,
            index: index.into(),
            id: "doc-1".into(),
            document: document.map(str::to_owned),
            version,
        }
    }

    #[test]
    fn operations_become_ndjson_lines_with_external_versions() {
        let ops = [
            op(
                Action::Index,
                "books",
                Some("{\n \"title\": \"Dune\"\n}"),
                Some(7),
            ),
            op(Action::Update, "books-2", Some(r#"{"n": 1}"#), None),
            op(Action::Delete, "books", None, Some(9)),
        ];
        let lines =
            request_body(&ops, &grants(&["books", "books-*"]), &BTreeMap::new(), "p").unwrap();
        assert_eq!(
            lines,
            vec![
                json!({"index": {"_index": "books", "_id": "doc-1", "version": 7, "version_type": "external"}}),
                json!({"title": "Dune"}),
                json!({"update": {"_index": "books-2", "_id": "doc-1"}}),
                json!({"doc": {"n": 1}}),
                json!({"delete": {"_index": "books", "_id": "doc-1", "version": 9, "version_type": "external"}}),
            ]
        );
    }

    #[test]
    fn an_index_outside_the_grant_refuses_the_whole_request() {
        let ops = [
            op(Action::Index, "books", Some("{}"), None),
            op(Action::Index, "secrets", Some("{}"), None),
        ];
        match request_body(&ops, &grants(&["books"]), &BTreeMap::new(), "p") {
            Err(BulkError::Forbidden(m)) => assert!(m.contains("`secrets`"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A prefix grant does not let a comma or a wildcard name more than one index.
        let ops = [op(Action::Index, "books-a,secrets", Some("{}"), None)];
        assert!(matches!(
            request_body(&ops, &grants(&["books-*"]), &BTreeMap::new(), "p"),
            Err(BulkError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_operations_are_invalid() {
        let g = grants(&["books"]);
        for ops in [
            [op(Action::Index, "books", Some("not json"), None)],
            [op(Action::Index, "books", Some("[1]"), None)],
            [op(Action::Create, "books", None, None)],
            [op(Action::Update, "books", Some("{}"), Some(3))],
            [op(Action::Delete, "books", Some("{}"), None)],
            [op(Action::Index, "books", Some("{}"), Some(-1))],
        ] {
            assert!(
                matches!(
                    request_body(&ops, &g, &BTreeMap::new(), "p"),
                    Err(BulkError::Invalid(_))
                ),
                "{ops:?}"
            );
        }
    }

    #[test]
    fn item_results_carry_status_and_error() {
        let ok = item_result(&json!({"index": {"status": 201, "result": "created"}})).unwrap();
        assert_eq!((ok.status, ok.error_type.as_str()), (201, ""));
        let conflict = item_result(&json!({"index": {"status": 409, "error": {
            "type": "version_conflict_engine_exception", "reason": "[a]: version conflict"}}}))
        .unwrap();
        assert_eq!(conflict.status, 409);
        assert_eq!(conflict.error_type, "version_conflict_engine_exception");
        assert_eq!(conflict.error_reason, "[a]: version conflict");
    }
}
