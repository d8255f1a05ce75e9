//! Settings: the seeds' `OUTBOX_*` names, resolved once at start-up.
//!
//! Precedence for one key: flag > environment variable > TOML file > default. A projection's own
//! keys in the file (`[[projection]] batch_size = ...`) are more specific than any global value
//! and win over it. Every value is validated here, before anything touches the database; an
//! error names the flag/variable/key the operator has to change.

use crate::{Error, Result};
use clap::Args;
pub use projector_core::spec::{
    ElasticSettings, Grants, Ordering, ProjectionSpec, Tuning, UnknownEventTypes,
    DEFAULT_SQL_MAX_RESULT_BYTES, DEFAULT_SQL_MAX_ROWS,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How log records are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at top level.
    Json,
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}` must be a non-negative number of seconds"));
    }
    Ok(v)
}

/// Settings given as flags or environment variables (flags win). All optional here; defaults and
/// the file fill the gaps in [`Settings::resolve`].
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// This host's identity in `claimed_by` [default: <hostname>-<pid>].
    #[arg(long, env = "OUTBOX_WORKER_ID", value_name = "OUTBOX_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Claim loops per projection in this host [default: 2].
    #[arg(
        long,
        env = "OUTBOX_CONCURRENCY",
        value_name = "OUTBOX_CONCURRENCY",
        allow_negative_numbers = true
    )]
    pub concurrency: Option<i64>,
    /// Events per claimed batch [default: 100].
    #[arg(
        long,
        env = "OUTBOX_BATCH_SIZE",
        value_name = "OUTBOX_BATCH_SIZE",
        allow_negative_numbers = true
    )]
    pub batch_size: Option<i64>,
    /// With ordering "aggregate": the most consecutive events of one aggregate a batch may carry
    /// (a run, handed to the plugin in seq order) [default: 1, one event per aggregate per batch].
    #[arg(
        long,
        env = "OUTBOX_EVENTS_PER_AGGREGATE",
        value_name = "OUTBOX_EVENTS_PER_AGGREGATE",
        allow_negative_numbers = true
    )]
    pub events_per_aggregate: Option<i64>,
    /// Fallback polling interval when no NOTIFY arrives, and for retries coming due [default: 1].
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_SECONDS", value_name = "OUTBOX_POLL_INTERVAL_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub poll_interval_seconds: Option<f64>,
    /// How long a claim is held before another host may reclaim it [default: 30].
    #[arg(long, env = "OUTBOX_LEASE_SECONDS", value_name = "OUTBOX_LEASE_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub lease_seconds: Option<f64>,
    /// How often stuck work is swept [default: 5].
    #[arg(long, env = "OUTBOX_RECLAIM_INTERVAL_SECONDS", value_name = "OUTBOX_RECLAIM_INTERVAL_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub reclaim_interval_seconds: Option<f64>,
    /// Events with a larger payload fail (`payload_too_large`) without reaching the plugin
    /// [default: 1048576].
    #[arg(
        long,
        env = "OUTBOX_MAX_PAYLOAD_BYTES",
        value_name = "OUTBOX_MAX_PAYLOAD_BYTES",
        allow_negative_numbers = true
    )]
    pub max_payload_bytes: Option<i64>,
    /// Events of a type the plugin does not declare: `deliver`, `skip` (done) or `fail`
    /// [default: deliver].
    #[arg(
        long,
        env = "OUTBOX_UNKNOWN_EVENT_TYPES",
        value_name = "OUTBOX_UNKNOWN_EVENT_TYPES"
    )]
    pub unknown_event_types: Option<UnknownEventTypes>,
    /// Upper bound for one batch, plugin call included [default: 60].
    #[arg(long, env = "OUTBOX_MAX_PROCESSING_SECONDS", value_name = "OUTBOX_MAX_PROCESSING_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub max_processing_seconds: Option<f64>,
    /// Attempts before a transient failure becomes terminal [default: 5].
    #[arg(
        long,
        env = "OUTBOX_MAX_ATTEMPTS",
        value_name = "OUTBOX_MAX_ATTEMPTS",
        allow_negative_numbers = true
    )]
    pub max_attempts: Option<i64>,
    /// First retry delay [default: 1].
    #[arg(long, env = "OUTBOX_BASE_BACKOFF_SECONDS", value_name = "OUTBOX_BASE_BACKOFF_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub base_backoff_seconds: Option<f64>,
    /// Longest retry delay [default: 300].
    #[arg(long, env = "OUTBOX_MAX_BACKOFF_SECONDS", value_name = "OUTBOX_MAX_BACKOFF_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub max_backoff_seconds: Option<f64>,
    /// Port for /metrics if it should differ from the HTTP port.
    #[arg(long, env = "OUTBOX_METRICS_PORT", value_name = "OUTBOX_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Port for /healthz, /readyz and /metrics [default: 8080].
    #[arg(long, env = "OUTBOX_HTTP_PORT", value_name = "OUTBOX_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Address the HTTP server binds [default: 0.0.0.0].
    #[arg(long, env = "OUTBOX_HTTP_HOST", value_name = "OUTBOX_HTTP_HOST")]
    pub http_host: Option<IpAddr>,
    /// Run this long, then shut down cleanly (smoke runs); 0 = until signalled [default: 0].
    #[arg(long, env = "OUTBOX_RUN_SECONDS", value_name = "OUTBOX_RUN_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub run_seconds: Option<f64>,
    /// Prefix of the dispatcher metrics [default: outbox_dispatch].
    #[arg(
        long = "metric-prefix",
        env = "OUTBOX_DISPATCH_METRIC_PREFIX",
        value_name = "OUTBOX_DISPATCH_METRIC_PREFIX"
    )]
    pub dispatch_metric_prefix: Option<String>,
    /// How often gauges that need SQL (lag, age, stuck, blocked) are refreshed [default: 5].
    #[arg(long, env = "OUTBOX_METRICS_REFRESH_SECONDS", value_name = "OUTBOX_METRICS_REFRESH_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub metrics_refresh_seconds: Option<f64>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "OUTBOX_LOG_FORMAT", value_name = "OUTBOX_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How often each projection's plugin file is checked for a new version; 0 disables [default: 2].
    #[arg(long, env = "OUTBOX_PLUGIN_WATCH_SECONDS", value_name = "OUTBOX_PLUGIN_WATCH_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub plugin_watch_seconds: Option<f64>,
    /// Bearer token for the admin API (plugin load/rollback); unset disables the admin API.
    #[arg(
        long,
        env = "OUTBOX_ADMIN_TOKEN",
        value_name = "OUTBOX_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Directory of compiled plugin code, reused across restarts; empty disables
    /// [default: $XDG_CACHE_HOME/projector/components or ~/.cache/projector/components].
    #[arg(
        long,
        env = "OUTBOX_PLUGIN_CACHE_DIR",
        value_name = "OUTBOX_PLUGIN_CACHE_DIR"
    )]
    pub plugin_cache_dir: Option<String>,
    /// Delete `done` rows older than this many seconds, in the background; 0 disables [default: 0].
    #[arg(long, env = "OUTBOX_RETENTION_DONE_SECONDS", value_name = "OUTBOX_RETENTION_DONE_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub retention_done_seconds: Option<f64>,
    /// Rows deleted per retention batch [default: 1000].
    #[arg(
        long,
        env = "OUTBOX_RETENTION_BATCH_SIZE",
        value_name = "OUTBOX_RETENTION_BATCH_SIZE",
        allow_negative_numbers = true
    )]
    pub retention_batch_size: Option<i64>,
    /// How often retention runs [default: 60].
    #[arg(long, env = "OUTBOX_RETENTION_INTERVAL_SECONDS", value_name = "OUTBOX_RETENTION_INTERVAL_SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub retention_interval_seconds: Option<f64>,
    /// Elasticsearch/OpenSearch URL for the `search` capability.
    #[arg(long, env = "ELASTIC_URL", value_name = "ELASTIC_URL")]
    pub elastic_url: Option<String>,
    /// Basic-auth user for ELASTIC_URL.
    #[arg(long, env = "ELASTIC_USERNAME", value_name = "ELASTIC_USERNAME")]
    pub elastic_username: Option<String>,
    /// Basic-auth password for ELASTIC_URL.
    #[arg(
        long,
        env = "ELASTIC_PASSWORD",
        value_name = "ELASTIC_PASSWORD",
        hide_env_values = true
    )]
    pub elastic_password: Option<String>,
    /// API key for ELASTIC_URL (instead of basic auth).
    #[arg(
        long,
        env = "ELASTIC_API_KEY",
        value_name = "ELASTIC_API_KEY",
        hide_env_values = true
    )]
    pub elastic_api_key: Option<String>,
    /// The index a search projection writes when its config names none (config key `index`).
    #[arg(long, env = "ELASTIC_INDEX", value_name = "ELASTIC_INDEX")]
    pub elastic_index: Option<String>,
}

/// The TOML file's shape. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    worker_id: Option<String>,
    concurrency: Option<i64>,
    batch_size: Option<i64>,
    events_per_aggregate: Option<i64>,
    poll_interval_seconds: Option<f64>,
    lease_seconds: Option<f64>,
    reclaim_interval_seconds: Option<f64>,
    max_processing_seconds: Option<f64>,
    max_attempts: Option<i64>,
    base_backoff_seconds: Option<f64>,
    max_backoff_seconds: Option<f64>,
    max_payload_bytes: Option<i64>,
    unknown_event_types: Option<UnknownEventTypes>,
    metrics_port: Option<u16>,
    http_port: Option<u16>,
    http_host: Option<IpAddr>,
    run_seconds: Option<f64>,
    dispatch_metric_prefix: Option<String>,
    metrics_refresh_seconds: Option<f64>,
    log_format: Option<LogFormat>,
    plugin_cache_dir: Option<String>,
    plugin_watch_seconds: Option<f64>,
    retention_done_seconds: Option<f64>,
    retention_batch_size: Option<i64>,
    retention_interval_seconds: Option<f64>,
    elastic_url: Option<String>,
    elastic_username: Option<String>,
    elastic_password: Option<String>,
    elastic_api_key: Option<String>,
    elastic_index: Option<String>,
    #[serde(default)]
    projection: Vec<FileProjection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProjection {
    name: String,
    plugin: PathBuf,
    #[serde(default)]
    ordering: Ordering,
    concurrency: Option<i64>,
    batch_size: Option<i64>,
    events_per_aggregate: Option<i64>,
    lease_seconds: Option<f64>,
    max_processing_seconds: Option<f64>,
    max_attempts: Option<i64>,
    base_backoff_seconds: Option<f64>,
    max_backoff_seconds: Option<f64>,
    max_payload_bytes: Option<i64>,
    unknown_event_types: Option<UnknownEventTypes>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    grants: Grants,
    memory_limit_mib: Option<u64>,
    #[serde(default)]
    sources: BTreeMap<String, String>,
}

/// Refuses grants that would reach past the projection: search index patterns matching every
/// index (`*`) or the cluster's system and hidden indices (a leading `.` or `_`), and zero
/// sql result bounds.
fn check_grants(projection: &str, grants: &Grants) -> Result<()> {
    let key = |k: &str| format!("projection `{projection}` grants.{k}");
    for index in &grants.search_indices {
        let stem = index.strip_suffix('*').unwrap_or(index);
        if stem.is_empty()
            || stem.starts_with(['.', '_', '-', '+'])
            || stem.contains([',', ' ', '/', '\\'])
        {
            return Err(Error::config(
                key("search_indices"),
                format!(
                    "`{index}` is not allowed: grant exact index names or prefixes (`books`, `books-*`); \
                     patterns matching every index, system or hidden indices (leading `.` or `_`) \
                     and lists (`,`) are refused"
                ),
            ));
        }
    }
    for (name, value) in [
        ("sql_max_rows", grants.sql_max_rows),
        ("sql_max_result_bytes", grants.sql_max_result_bytes),
    ] {
        if value == Some(0) {
            return Err(Error::config(key(name), "must be at least 1"));
        }
    }
    Ok(())
}

/// Everything `projector run` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres connection URL.
    pub database_url: String,
    /// `claimed_by` for this host's claims.
    pub worker_id: String,
    /// Fallback polling interval.
    pub poll_interval: Duration,
    /// Stuck-work sweep interval.
    pub reclaim_interval: Duration,
    /// Separate metrics port, if any.
    pub metrics_port: Option<u16>,
    /// HTTP port.
    pub http_port: u16,
    /// HTTP bind address.
    pub http_host: IpAddr,
    /// Smoke-run duration; `None` runs until signalled.
    pub run_for: Option<Duration>,
    /// Dispatcher metric prefix.
    pub metric_prefix: String,
    /// SQL-backed gauge refresh interval.
    pub metrics_refresh: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// The projections, in the order given.
    pub projections: Vec<ProjectionSpec>,
    /// The search cluster, when any projection is granted `search`.
    pub elastic: Option<ElasticSettings>,
    /// Where compiled plugin code is cached; `None` compiles every start.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Bearer token the admin API requires; `None` disables it.
    pub admin_token: Option<String>,
    /// How often plugin files are checked for a new version; `None` disables watching.
    pub plugin_watch: Option<Duration>,
    /// Background deletion of old `done` rows; `None` keeps them.
    pub retention: Option<Retention>,
}

/// Retention of `done` rows ([`projector_store::outbox::retention`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// `done` rows older than this are deleted.
    pub done_after: Duration,
    /// Rows per delete batch.
    pub batch_size: i64,
    /// How often the background pass runs.
    pub interval: Duration,
}

/// Picks the first value present: flag/env, then file, then the default.
fn pick<T>(over: Option<T>, file: Option<T>, default: T) -> T {
    over.or(file).unwrap_or(default)
}

fn positive_int(key: &str, v: i64, max: i64) -> Result<i64> {
    if v < 1 || v > max {
        return Err(Error::config(
            key,
            format!("must be between 1 and {max}, got {v}"),
        ));
    }
    Ok(v)
}

fn seconds(key: &str, v: f64, allow_zero: bool) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) {
        let want = if allow_zero {
            "non-negative"
        } else {
            "positive"
        };
        return Err(Error::config(
            key,
            format!("must be a {want} number of seconds, got {v}"),
        ));
    }
    Duration::try_from_secs_f64(v).map_err(|e| Error::config(key, e.to_string()))
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("projector").join("components"))
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "projector".to_owned());
    format!("{host}-{}", std::process::id())
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let key = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| Error::config(&key, e.to_string()))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" line {}", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        Error::config(
            format!("{}{line}", path.display()),
            e.message().trim().to_owned(),
        )
    })
}

/// Parses `NAME=PATH` from `--plugin`.
fn parse_plugin_flag(flag: &str) -> Result<(String, PathBuf)> {
    match flag.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => {
            Ok((name.trim().to_owned(), PathBuf::from(path.trim())))
        }
        _ => Err(Error::config(
            "--plugin",
            format!("expected NAME=PATH (e.g. search=plugins/search.wasm), got `{flag}`"),
        )),
    }
}

fn valid_projection_name(key: &str, name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("projection name `{name}` must be 1-63 characters of [A-Za-z0-9_.-], starting with a letter or digit"),
        ))
    }
}

impl Settings {
    /// Resolves flags/env (`over`), the optional TOML file and `--plugin` flags into settings.
    pub fn resolve(
        over: Overrides,
        config: Option<&Path>,
        plugin_flags: &[String],
    ) -> Result<Self> {
        let mut over = over;
        let mut file = match config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let elastic_over = ElasticInput {
            url: over.elastic_url.take(),
            username: over.elastic_username.take(),
            password: over.elastic_password.take(),
            api_key: over.elastic_api_key.take(),
            index: over.elastic_index.take(),
        };
        let elastic_file = ElasticInput {
            url: file.elastic_url.take(),
            username: file.elastic_username.take(),
            password: file.elastic_password.take(),
            api_key: file.elastic_api_key.take(),
            index: file.elastic_index.take(),
        };
        let base_dir = config
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();

        let database_url = over
            .database_url
            .or(file.database_url)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Error::config(
                    "DATABASE_URL",
                    "not set: pass --database-url or set DATABASE_URL",
                )
            })?;
        let worker_id = pick(over.worker_id, file.worker_id, default_worker_id());
        if worker_id.trim().is_empty() {
            return Err(Error::config("OUTBOX_WORKER_ID", "must not be empty"));
        }

        let defaults = Tuning {
            concurrency: positive_int(
                "OUTBOX_CONCURRENCY",
                pick(over.concurrency, file.concurrency, 2),
                256,
            )? as usize,
            batch_size: positive_int(
                "OUTBOX_BATCH_SIZE",
                pick(over.batch_size, file.batch_size, 100),
                10_000,
            )?,
            events_per_aggregate: positive_int(
                "OUTBOX_EVENTS_PER_AGGREGATE",
                pick(over.events_per_aggregate, file.events_per_aggregate, 1),
                10_000,
            )?,
            lease: seconds(
                "OUTBOX_LEASE_SECONDS",
                pick(over.lease_seconds, file.lease_seconds, 30.0),
                false,
            )?,
            max_processing: seconds(
                "OUTBOX_MAX_PROCESSING_SECONDS",
                pick(
                    over.max_processing_seconds,
                    file.max_processing_seconds,
                    60.0,
                ),
                false,
            )?,
            max_attempts: positive_int(
                "OUTBOX_MAX_ATTEMPTS",
                pick(over.max_attempts, file.max_attempts, 5),
                1_000,
            )? as i32,
            base_backoff: seconds(
                "OUTBOX_BASE_BACKOFF_SECONDS",
                pick(over.base_backoff_seconds, file.base_backoff_seconds, 1.0),
                false,
            )?,
            max_backoff: seconds(
                "OUTBOX_MAX_BACKOFF_SECONDS",
                pick(over.max_backoff_seconds, file.max_backoff_seconds, 300.0),
                false,
            )?,
            max_payload_bytes: positive_int(
                "OUTBOX_MAX_PAYLOAD_BYTES",
                pick(over.max_payload_bytes, file.max_payload_bytes, 1 << 20),
                1 << 30,
            )? as usize,
            unknown_event_types: pick(
                over.unknown_event_types,
                file.unknown_event_types,
                UnknownEventTypes::Deliver,
            ),
        };
        check_backoff("OUTBOX_MAX_BACKOFF_SECONDS", &defaults)?;

        let mut projections: Vec<ProjectionSpec> = Vec::new();
        for (i, p) in file.projection.into_iter().enumerate() {
            let key = |k: &str| format!("projection[{i}].{k}");
            valid_projection_name(&key("name"), &p.name)?;
            if projections.iter().any(|q| q.name == p.name) {
                return Err(Error::config(
                    key("name"),
                    format!("projection `{}` is listed twice", p.name),
                ));
            }
            let t = &defaults;
            let tuning = Tuning {
                concurrency: match p.concurrency {
                    Some(v) => positive_int(&key("concurrency"), v, 256)? as usize,
                    None => t.concurrency,
                },
                batch_size: match p.batch_size {
                    Some(v) => positive_int(&key("batch_size"), v, 10_000)?,
                    None => t.batch_size,
                },
                events_per_aggregate: match p.events_per_aggregate {
                    Some(v) => positive_int(&key("events_per_aggregate"), v, 10_000)?,
                    None => t.events_per_aggregate,
                },
                lease: opt_seconds(&key("lease_seconds"), p.lease_seconds, t.lease)?,
                max_processing: opt_seconds(
                    &key("max_processing_seconds"),
                    p.max_processing_seconds,
                    t.max_processing,
                )?,
                max_attempts: match p.max_attempts {
                    Some(v) => positive_int(&key("max_attempts"), v, 1_000)? as i32,
                    None => t.max_attempts,
                },
                base_backoff: opt_seconds(
                    &key("base_backoff_seconds"),
                    p.base_backoff_seconds,
                    t.base_backoff,
                )?,
                max_backoff: opt_seconds(
                    &key("max_backoff_seconds"),
                    p.max_backoff_seconds,
                    t.max_backoff,
                )?,
                max_payload_bytes: match p.max_payload_bytes {
                    Some(v) => positive_int(&key("max_payload_bytes"), v, 1 << 30)? as usize,
                    None => t.max_payload_bytes,
                },
                unknown_event_types: p.unknown_event_types.unwrap_or(t.unknown_event_types),
            };
            check_backoff(&key("max_backoff_seconds"), &tuning)?;
            check_grants(&p.name, &p.grants)?;
            let plugin = if p.plugin.is_absolute() {
                p.plugin
            } else {
                base_dir.join(p.plugin)
            };
            projections.push(ProjectionSpec {
                name: p.name,
                plugin,
                ordering: p.ordering,
                tuning,
                config: p.config,
                grants: p.grants,
                sources: p.sources,
                memory_limit: match p.memory_limit_mib {
                    Some(mib) => {
                        positive_int(&key("memory_limit_mib"), mib as i64, 4096)? as usize
                            * (1 << 20)
                    }
                    None => projector_core::spec::DEFAULT_MEMORY_BYTES,
                },
            });
        }
        for flag in plugin_flags {
            let (name, plugin) = parse_plugin_flag(flag)?;
            valid_projection_name("--plugin", &name)?;
            let spec = ProjectionSpec {
                name: name.clone(),
                plugin,
                ordering: Ordering::default(),
                tuning: defaults.clone(),
                config: BTreeMap::new(),
                grants: Grants::default(),
                sources: BTreeMap::new(),
                memory_limit: projector_core::spec::DEFAULT_MEMORY_BYTES,
            };
            match projections.iter_mut().find(|p| p.name == name) {
                Some(existing) => {
                    existing.plugin = spec.plugin;
                }
                None => projections.push(spec),
            }
        }
        if projections.is_empty() {
            return Err(Error::config(
                "--plugin",
                "no projection configured: pass --plugin NAME=PATH or list [[projection]] in --config",
            ));
        }

        let http_port = pick(over.http_port, file.http_port, 8080);
        let metrics_port = over
            .metrics_port
            .or(file.metrics_port)
            .filter(|p| *p != http_port);
        let run_seconds = seconds(
            "OUTBOX_RUN_SECONDS",
            pick(over.run_seconds, file.run_seconds, 0.0),
            true,
        )?;
        let metric_prefix = pick(
            over.dispatch_metric_prefix,
            file.dispatch_metric_prefix,
            "outbox_dispatch".to_owned(),
        );
        let prefix_ok = metric_prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && metric_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            return Err(Error::config(
                "OUTBOX_DISPATCH_METRIC_PREFIX",
                format!("`{metric_prefix}` is not a valid Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)"),
            ));
        }

        let elastic = resolve_elastic(elastic_over, elastic_file, &mut projections)?;

        let plugin_cache_dir = match over
            .plugin_cache_dir
            .take()
            .or(file.plugin_cache_dir.take())
        {
            Some(dir) if dir.trim().is_empty() => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => default_cache_dir(),
        };

        let admin_token = over.admin_token.take().filter(|t| !t.is_empty());
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(Error::config(
                "OUTBOX_ADMIN_TOKEN",
                "must be at least 16 characters",
            ));
        }

        let plugin_watch = seconds(
            "OUTBOX_PLUGIN_WATCH_SECONDS",
            pick(over.plugin_watch_seconds, file.plugin_watch_seconds, 2.0),
            true,
        )?;

        let retention = Retention::resolve(
            pick(
                over.retention_done_seconds,
                file.retention_done_seconds,
                0.0,
            ),
            pick(over.retention_batch_size, file.retention_batch_size, 1000),
            pick(
                over.retention_interval_seconds,
                file.retention_interval_seconds,
                60.0,
            ),
        )?;

        Ok(Settings {
            retention,
            plugin_watch: (plugin_watch > Duration::ZERO).then_some(plugin_watch),
            admin_token,
            plugin_cache_dir,
            elastic,
            database_url,
            worker_id,
            poll_interval: seconds(
                "OUTBOX_POLL_INTERVAL_SECONDS",
                pick(over.poll_interval_seconds, file.poll_interval_seconds, 1.0),
                false,
            )?,
            reclaim_interval: seconds(
                "OUTBOX_RECLAIM_INTERVAL_SECONDS",
                pick(
                    over.reclaim_interval_seconds,
                    file.reclaim_interval_seconds,
                    5.0,
                ),
                false,
            )?,
            metrics_port,
            http_port,
            http_host: pick(over.http_host, file.http_host, IpAddr::from([0, 0, 0, 0])),
            run_for: (run_seconds > Duration::ZERO).then_some(run_seconds),
            metric_prefix,
            metrics_refresh: seconds(
                "OUTBOX_METRICS_REFRESH_SECONDS",
                pick(
                    over.metrics_refresh_seconds,
                    file.metrics_refresh_seconds,
                    5.0,
                ),
                false,
            )?,
            log_format: pick(over.log_format, file.log_format, LogFormat::Text),
            projections,
        })
    }
}

impl Retention {
    /// Validates the three retention settings; `done_seconds == 0` means retention is off.
    pub fn resolve(
        done_seconds: f64,
        batch_size: i64,
        interval_seconds: f64,
    ) -> Result<Option<Self>> {
        let done_after = seconds("OUTBOX_RETENTION_DONE_SECONDS", done_seconds, true)?;
        let batch_size = positive_int("OUTBOX_RETENTION_BATCH_SIZE", batch_size, 100_000)?;
        let interval = seconds("OUTBOX_RETENTION_INTERVAL_SECONDS", interval_seconds, false)?;
        Ok((done_after > Duration::ZERO).then_some(Retention {
            done_after,
            batch_size,
            interval,
        }))
    }
}

/// The search cluster settings, required when a projection is granted `search`. A search
/// projection without an `index` in its config gets `ELASTIC_INDEX`.
struct ElasticInput {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    api_key: Option<String>,
    index: Option<String>,
}

fn resolve_elastic(
    over: ElasticInput,
    file: ElasticInput,
    projections: &mut [ProjectionSpec],
) -> Result<Option<ElasticSettings>> {
    let first = |a: Option<String>, b: Option<String>| a.or(b).filter(|v| !v.is_empty());
    let index = first(over.index, file.index);
    let searching: Vec<&mut ProjectionSpec> = projections
        .iter_mut()
        .filter(|p| p.grants.search())
        .collect();
    if searching.is_empty() {
        return Ok(None);
    }
    let url = first(over.url, file.url).ok_or_else(|| {
        Error::config(
            "ELASTIC_URL",
            format!(
                "not set, but projection `{}` is granted `search`",
                searching[0].name
            ),
        )
    })?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::config(
            "ELASTIC_URL",
            format!("`{url}` is not an http(s) URL"),
        ));
    }
    for p in searching {
        if !p.config.contains_key("index") {
            if let Some(index) = &index {
                p.config.insert("index".to_owned(), index.clone());
            }
        }
    }
    let user = first(over.username, file.username);
    let password = first(over.password, file.password);
    let basic_auth = match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::config(
                "ELASTIC_PASSWORD",
                "ELASTIC_USERNAME is set but the password is not",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "ELASTIC_USERNAME",
                "ELASTIC_PASSWORD is set but the user is not",
            ))
        }
    };
    Ok(Some(ElasticSettings {
        url,
        basic_auth,
        api_key: first(over.api_key, file.api_key),
    }))
}

fn opt_seconds(key: &str, v: Option<f64>, default: Duration) -> Result<Duration> {
    v.map(|v| seconds(key, v, false)).unwrap_or(Ok(default))
}

fn check_backoff(key: &str, t: &Tuning) -> Result<()> {
    if t.max_backoff < t.base_backoff {
        return Err(Error::config(
            key,
            format!(
                "the longest retry delay ({:?}) is shorter than the first one ({:?})",
                t.max_backoff, t.base_backoff
            ),
        ));
    }
    Ok(())
}

/// The database a one-shot command works on.
#[derive(Debug, Args)]
pub struct Database {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

impl Database {
    /// The URL, or the error naming `DATABASE_URL` when it is missing.
    pub fn url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Error::config(
                    "DATABASE_URL",
                    "not set: pass --database-url or set DATABASE_URL",
                )
            })
    }
}

/// Arguments of `projector run`. Every setting also reads its environment variable; a flag wins
/// over the variable, the variable over the `--config` file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file listing projections and settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A projection with default settings: NAME=path/to/plugin.wasm (repeatable).
    #[arg(long = "plugin", value_name = "NAME=PATH")]
    pub plugins: Vec<String>,
    /// Do not apply migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// The settings.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `LogFormat` parses from `text` or `json`.
impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over() -> Overrides {
        Overrides {
            database_url: Some("postgres://x@127.0.0.1/db".into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn plugin_flag_needs_name_and_path() {
        let err = Settings::resolve(over(), None, &["nopath".into()]).unwrap_err();
        assert!(err.to_string().starts_with("--plugin:"), "{err}");
        let s = Settings::resolve(over(), None, &["a=x.wasm".into()]).unwrap();
        assert_eq!(s.projections[0].name, "a");
        assert_eq!(s.projections[0].tuning.batch_size, 100);
    }

    #[test]
    fn unknown_file_key_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "batch_size = 5\nbogus_key = 1\n").unwrap();
        let err = Settings::resolve(over(), Some(&path), &["a=x.wasm".into()]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bogus_key") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn projection_keys_override_globals_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "batch_size = 5\nmax_attempts = 7\n[[projection]]\nname = \"a\"\nplugin = \"a.wasm\"\nbatch_size = 9\n\
             ordering = \"none\"\n[projection.config]\nindex = \"books\"\n",
        )
        .unwrap();
        let mut o = over();
        o.max_attempts = Some(3);
        let s = Settings::resolve(o, Some(&path), &[]).unwrap();
        let p = &s.projections[0];
        assert_eq!(p.tuning.batch_size, 9);
        assert_eq!(p.tuning.max_attempts, 3);
        assert_eq!(p.ordering, Ordering::None);
        assert_eq!(p.plugin, dir.path().join("a.wasm"));
        assert_eq!(p.config["index"], "books");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut o = over();
        o.batch_size = Some(0);
        let err = Settings::resolve(o, None, &["a=x.wasm".into()]).unwrap_err();
        assert!(err.to_string().starts_with("OUTBOX_BATCH_SIZE:"), "{err}");
        let mut o = over();
        o.base_backoff_seconds = Some(10.0);
        o.max_backoff_seconds = Some(1.0);
        let err = Settings::resolve(o, None, &["a=x.wasm".into()]).unwrap_err();
        assert!(
            err.to_string().starts_with("OUTBOX_MAX_BACKOFF_SECONDS:"),
            "{err}"
        );
        let err = Settings::resolve(Overrides::default(), None, &["a=x.wasm".into()]).unwrap_err();
        assert!(err.to_string().starts_with("DATABASE_URL:"), "{err}");
    }
}
