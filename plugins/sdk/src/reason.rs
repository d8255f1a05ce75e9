//! The failure reasons shared by projector plugins: one constant per reason.
//!
//! A reason is a metric label and what operators filter replays by, so the set is fixed and
//! small. In the projector repository, this list, the table in docs/plugins.md ("Reason
//! naming") and the Python helper (`plugins/sdk/python/projector_plugin_sdk.py`) name the same
//! reasons; the test `tests/projections/plugin_sdk.rs` fails when one of them has a reason the others
//! lack, or when the table's kind differs from the first word of a constant's doc. A plugin may
//! add reasons of its own for its sink's domain (`unknown_position`, ...).
//!
//! Each constant's value is its name in lowercase.

// Input.

/// Deterministic: the payload is not what the plugin expects (not JSON, a field missing or of
/// the wrong type), including a value Postgres refuses as data (SQLSTATE class 22).
pub const BAD_PAYLOAD: &str = "bad_payload";
/// Deterministic: the projection's `[projection.config]` misses a key or has a bad value.
pub const BAD_CONFIG: &str = "bad_config";

// sql: see [`crate::sql::Error::outcome`].

/// Transient: a serialization failure or deadlock (40001, 40P01).
pub const SQL_SERIALIZATION: &str = "sql_serialization";
/// Transient: the statement ran past its time limit (57014).
pub const SQL_TIMEOUT: &str = "sql_timeout";
/// Transient: the connection to the database failed.
pub const SQL_CONNECTION: &str = "sql_connection";
/// Deterministic: the projection's role may not do this (42501): a table not granted.
pub const SQL_PERMISSION: &str = "sql_permission";
/// Deterministic: any other database error (a constraint, a syntax error), or parameters or rows
/// that do not convert to or from JSON.
pub const SQL_ERROR: &str = "sql_error";

// search: see [`crate::search`].

/// Transient: the search server could not be reached.
pub const ES_CONNECT: &str = "es_connect";
/// Transient: the server throttled the request or the item (429).
pub const ES_429: &str = "es_429";
/// Transient: the server failed (5xx).
pub const ES_5XX: &str = "es_5xx";
/// Transient: the server timed out the request or the item (408).
pub const ES_TIMEOUT: &str = "es_timeout";
/// Transient: the server refused the host's credentials (401, 403). They are the host's, not the
/// event's: once an operator fixes them the same event succeeds.
pub const ES_AUTH: &str = "es_auth";
/// Transient: the server answered without a result for an operation.
pub const ES_RESPONSE: &str = "es_response";
/// Deterministic: the server could not map or parse the document (400).
pub const ES_MAPPING: &str = "es_mapping";
/// Deterministic: the server refused the item with another 4xx (a 404 on an update).
pub const ES_REJECTED: &str = "es_rejected";
/// Deterministic: the server answered the whole request with a status no retry helps.
pub const ES_STATUS: &str = "es_status";
/// Deterministic: an operation names an index the projection was not granted.
pub const ES_FORBIDDEN: &str = "es_forbidden";
/// Deterministic: an operation is malformed (a document that is not JSON, none for an index).
pub const ES_INVALID: &str = "es_invalid";
