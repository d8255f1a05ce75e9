//! What one projection is: its name, plugin, ordering, delivery tuning, grants and limits, as
//! plain data. Resolved and validated by the service's settings (flags, environment, TOML);
//! everything below the service reads it and nothing here does I/O.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Memory budget per plugin instance (all linear memories and tables together), by default
/// (`memory_limit_mib`).
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;

/// Whether events of one aggregate are delivered strictly in `seq` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// An event takes effect only after every earlier event of its aggregate succeeded (default).
    #[default]
    Aggregate,
    /// No ordering: any due event may be claimed.
    None,
}

/// What the host does with an event whose type the plugin does not declare (`describe()`'s
/// `event-types`: exact names or prefixes ending in `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownEventTypes {
    /// Deliver it anyway and let the plugin answer (the contract's default).
    #[default]
    Deliver,
    /// Settle it `done` without calling the plugin.
    Skip,
    /// Fail it (deterministic `unknown_event_type`) without calling the plugin.
    Fail,
}

impl std::str::FromStr for UnknownEventTypes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "deliver" => Ok(Self::Deliver),
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            other => Err(format!(
                "expected `deliver`, `skip` or `fail`, got `{other}`"
            )),
        }
    }
}

impl std::fmt::Display for UnknownEventTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deliver => "deliver",
            Self::Skip => "skip",
            Self::Fail => "fail",
        })
    }
}
/// The capabilities a projection's plugin may import, beyond `log` and `config`. A plugin that
/// imports a capability its projection was not granted is refused at load.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `search`: the indices the plugin may write, exact names or prefixes ending in `*`.
    #[serde(default)]
    pub search_indices: Vec<String>,
    /// `sql`: the tables (optionally `schema.table`) the projection's role may read and write.
    #[serde(default)]
    pub sql_tables: Vec<String>,
    /// `projector rebuild`: the tables a rebuild source may read (its query runs as a role that
    /// may read these and nothing else).
    #[serde(default)]
    pub source_tables: Vec<String>,
    /// `sql`: the most rows one `query` may return [default: 10000].
    pub sql_max_rows: Option<u64>,
    /// `sql`: the most bytes one `query`'s result may hold [default: 16777216].
    pub sql_max_result_bytes: Option<u64>,
}

/// Default of `[projection.grants] sql_max_rows`.
pub const DEFAULT_SQL_MAX_ROWS: usize = 10_000;
/// Default of `[projection.grants] sql_max_result_bytes`.
pub const DEFAULT_SQL_MAX_RESULT_BYTES: usize = 16 << 20;

impl Grants {
    /// Whether the `search` capability is granted.
    pub fn search(&self) -> bool {
        !self.search_indices.is_empty()
    }

    /// Whether the `sql` capability is granted.
    pub fn sql(&self) -> bool {
        !self.sql_tables.is_empty()
    }

    /// The most rows one sql `query` may return.
    pub fn sql_max_rows(&self) -> usize {
        self.sql_max_rows
            .map_or(DEFAULT_SQL_MAX_ROWS, |v| v.min(usize::MAX as u64) as usize)
    }

    /// The most bytes one sql `query`'s result may hold.
    pub fn sql_max_result_bytes(&self) -> usize {
        self.sql_max_result_bytes
            .map_or(DEFAULT_SQL_MAX_RESULT_BYTES, |v| {
                v.min(usize::MAX as u64) as usize
            })
    }

    /// Whether `index` is one of the granted indices.
    pub fn allows_index(&self, index: &str) -> bool {
        self.search_indices
            .iter()
            .any(|g| match g.strip_suffix('*') {
                Some(prefix) => index.starts_with(prefix),
                None => g == index,
            })
    }
}
/// Per-projection delivery tuning. Its defaults, bounds and names are the service's settings
/// table (`projector_service::settings`), the one place they are written.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Claim loops for this projection in this host.
    pub concurrency: usize,
    /// Events per batch.
    pub batch_size: i64,
    /// With per-aggregate ordering: the most consecutive events of one aggregate in one batch
    /// (1: at most one, the guarantee of contract `projector:plugin@0.1.0`).
    pub events_per_aggregate: i64,
    /// Claim lease.
    pub lease: Duration,
    /// Upper bound for one batch; the plugin call is interrupted at this deadline.
    pub max_processing: Duration,
    /// Attempts before a transient failure becomes terminal.
    pub max_attempts: i32,
    /// First retry delay.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Larger payloads fail without reaching the plugin.
    pub max_payload_bytes: usize,
    /// Payload bytes one batch may carry (its first event always goes, whatever its size).
    pub batch_max_bytes: usize,
    /// Events of types the plugin does not declare.
    pub unknown_event_types: UnknownEventTypes,
}

/// One projection this host runs.
#[derive(Debug, Clone)]
pub struct ProjectionSpec {
    /// The projection's name (`outbox_events.projection`).
    pub name: String,
    /// Path of the plugin component.
    pub plugin: PathBuf,
    /// Per-aggregate ordering or none.
    pub ordering: Ordering,
    /// Delivery tuning.
    pub tuning: Tuning,
    /// The plugin's configuration map.
    pub config: BTreeMap<String, String>,
    /// Capabilities granted to the plugin.
    pub grants: Grants,
    /// Linear-memory cap per plugin instance, in bytes.
    pub memory_limit: usize,
    /// Named source-of-truth queries `projector rebuild --source NAME` reads
    /// (`[projection.sources]`).
    pub sources: BTreeMap<String, String>,
}

/// How the host reaches the search cluster. Plugins never see any of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticSettings {
    /// Base URL.
    pub url: String,
    /// Basic auth, if any.
    pub basic_auth: Option<(String, String)>,
    /// API key, if any.
    pub api_key: Option<String>,
}
