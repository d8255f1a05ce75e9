//! Settings: every `projector run` setting is declared once, as a row of the table at
//! [`settings!`]'s invocation below, and resolved once at start-up.
//!
//! A row names the setting (its TOML key), its kind (type and bounds, see [`Kind`]), its default,
//! its environment variable, its flag and its help text. From the rows the macro generates the
//! clap arguments ([`Overrides`]), the TOML file's structs (global keys and, for the rows under
//! `per_projection`, keys of each `[[projection]]`), the defaults ([`default_tuning`]), the range
//! checks, `--help`, and [`table`], the descriptors the README's settings table is tested
//! against. Everything that is not a scalar (the projection list, grants, sources, config maps,
//! `--plugin NAME=PATH`) and every rule across settings (backoff order, the admin token's length,
//! search credentials) is written by hand below the table.
//!
//! Why a `macro_rules!` table and not a build step: the table is Rust, so the compiler checks
//! each default against its kind's type and each per-projection row against a [`Tuning`] field
//! (a `Tuning` field without a row does not compile); there is no generator to read, no
//! generated file to find, and an editor goes from a use to its row. rustc declares its own
//! `-C`/`-Z` options the same way (`options!`).
//!
//! Precedence for one key: flag > environment variable > TOML file > default. A projection's own
//! keys in the file (`[[projection]] batch_size = ...`) are more specific than any global value
//! and win over it. Every value is validated here, before anything touches the database; an
//! error names the flag/variable/key the operator has to change (exit code 2).

use crate::{Error, Result};
use clap::Args;
pub use projector_core::spec::{
    ElasticSettings, Grants, Ordering, ProjectionSpec, Tuning, UnknownEventTypes,
    DEFAULT_SQL_MAX_RESULT_BYTES, DEFAULT_SQL_MAX_ROWS,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::marker::PhantomData;
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

/// Which version a starting host runs when its configured plugin file differs from the version
/// the database says is active (docs/plugins.md, "Which version runs").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginFilePolicy {
    /// The database's active version, unless the file is a version no host was given before
    /// (a new deploy), which is then registered and activated.
    Database,
    /// The file, always: it is activated at every start (the rule before 0.9).
    File,
}

impl std::str::FromStr for PluginFilePolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "database" => Ok(Self::Database),
            "file" => Ok(Self::File),
            other => Err(format!("expected `database` or `file`, got `{other}`")),
        }
    }
}

impl std::fmt::Display for PluginFilePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Database => "database",
            Self::File => "file",
        })
    }
}

/// A setting's kind: the type a flag, variable or TOML key gives ([`Kind::Raw`]), the bounds it
/// is checked against, and the type the service uses once checked ([`Kind::Value`]).
pub trait Kind {
    /// As given.
    type Raw: Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static;
    /// As used, once checked.
    type Value;
    /// Whether the flag takes values starting with `-`, so that `-5` is refused by the range
    /// check naming the setting rather than taken for an unknown flag.
    const NEGATIVE: bool = false;
    /// Whether `--help` hides the variable's value.
    const SECRET: bool = false;
    /// Parses a flag or variable.
    fn parse(s: &str) -> std::result::Result<Self::Raw, String>;
    /// Checks the bounds; an error names `key`.
    fn check(key: &str, raw: Self::Raw) -> Result<Self::Value>;
    /// A value as the help and the README show it.
    fn show(raw: &Self::Raw) -> String;
}

/// A whole number from 1 to `MAX`.
pub struct Count<const MAX: i64>;

impl<const MAX: i64> Kind for Count<MAX> {
    type Raw = i64;
    type Value = i64;
    const NEGATIVE: bool = true;
    fn parse(s: &str) -> std::result::Result<i64, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number"))
    }
    fn check(key: &str, v: i64) -> Result<i64> {
        if !(1..=MAX).contains(&v) {
            return Err(Error::config(
                key,
                format!("must be between 1 and {MAX}, got {v}"),
            ));
        }
        Ok(v)
    }
    fn show(v: &i64) -> String {
        v.to_string()
    }
}

/// A number of seconds, more than zero.
pub struct Seconds;

/// A number of seconds; 0 turns the feature off.
pub struct SecondsOrOff;

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

impl Kind for Seconds {
    type Raw = f64;
    type Value = Duration;
    const NEGATIVE: bool = true;
    fn parse(s: &str) -> std::result::Result<f64, String> {
        parse_seconds(s)
    }
    fn check(key: &str, v: f64) -> Result<Duration> {
        seconds(key, v, false)
    }
    fn show(v: &f64) -> String {
        v.to_string()
    }
}

impl Kind for SecondsOrOff {
    type Raw = f64;
    type Value = Duration;
    const NEGATIVE: bool = true;
    fn parse(s: &str) -> std::result::Result<f64, String> {
        parse_seconds(s)
    }
    fn check(key: &str, v: f64) -> Result<Duration> {
        seconds(key, v, true)
    }
    fn show(v: &f64) -> String {
        if *v == 0.0 {
            "0 (off)".to_owned()
        } else {
            v.to_string()
        }
    }
}

/// A TCP port.
pub struct Port;

impl Kind for Port {
    type Raw = u16;
    type Value = u16;
    fn parse(s: &str) -> std::result::Result<u16, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a port number (0-65535)"))
    }
    fn check(_: &str, v: u16) -> Result<u16> {
        Ok(v)
    }
    fn show(v: &u16) -> String {
        v.to_string()
    }
}

/// An IP address.
pub struct Address;

impl Kind for Address {
    type Raw = IpAddr;
    type Value = IpAddr;
    fn parse(s: &str) -> std::result::Result<IpAddr, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address"))
    }
    fn check(_: &str, v: IpAddr) -> Result<IpAddr> {
        Ok(v)
    }
    fn show(v: &IpAddr) -> String {
        v.to_string()
    }
}

/// Text; [`Secret`] when `--help` must not print it.
pub struct Text;

/// Text `--help` does not print (passwords, tokens, URLs with credentials).
pub struct Secret;

impl Kind for Text {
    type Raw = String;
    type Value = String;
    fn parse(s: &str) -> std::result::Result<String, String> {
        Ok(s.to_owned())
    }
    fn check(_: &str, v: String) -> Result<String> {
        Ok(v)
    }
    fn show(v: &String) -> String {
        format!("`{v}`")
    }
}

impl Kind for Secret {
    type Raw = String;
    type Value = String;
    const SECRET: bool = true;
    fn parse(s: &str) -> std::result::Result<String, String> {
        Ok(s.to_owned())
    }
    fn check(_: &str, v: String) -> Result<String> {
        Ok(v)
    }
    fn show(_: &String) -> String {
        "(hidden)".to_owned()
    }
}

/// One of a few words: an enum parsed by its `FromStr`, in TOML by its `Deserialize`.
pub struct Choice<T>(PhantomData<T>);

impl<T> Kind for Choice<T>
where
    T: std::str::FromStr<Err = String>
        + std::fmt::Display
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    type Raw = T;
    type Value = T;
    fn parse(s: &str) -> std::result::Result<T, String> {
        s.parse()
    }
    fn check(_: &str, v: T) -> Result<T> {
        Ok(v)
    }
    fn show(v: &T) -> String {
        format!("`{v}`")
    }
}

/// A table row that has a default: resolving it always gives a value.
pub struct Defaulted<K: Kind> {
    /// The TOML key (and the [`Overrides`] field).
    pub key: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The flag, without its leading `--`.
    pub flag: &'static str,
    /// What the setting does (`--help`, and the README's "meaning").
    pub help: &'static str,
    /// The value when nothing is given.
    pub default: fn() -> K::Raw,
    /// Whether a `[[projection]]` may set it for itself.
    pub per_projection: bool,
}

/// A table row without a default value: required, computed when unset (the host name), or off.
pub struct Optional<K: Kind> {
    /// The TOML key (and the [`Overrides`] field).
    pub key: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The flag, without its leading `--`.
    pub flag: &'static str,
    /// What the setting does (`--help`, and the README's "meaning").
    pub help: &'static str,
    /// What happens when it is unset, as the README's "default" column says it.
    pub unset: &'static str,
    /// Whether the service refuses to start without it (no `[default: ...]` in `--help`).
    pub required: bool,
    /// Its kind.
    pub kind: PhantomData<K>,
}

/// What every row says about itself: the README's settings table has one line per row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// The environment variable.
    pub env: &'static str,
    /// The flag, without `--`.
    pub flag: &'static str,
    /// The TOML key.
    pub key: &'static str,
    /// The default as shown.
    pub default: String,
    /// What the setting does.
    pub help: &'static str,
    /// Whether a `[[projection]]` may set it for itself.
    pub per_projection: bool,
}

/// Resolving one row: the first value given (flag or variable, else the file), checked.
pub trait Setting {
    /// The row's kind.
    type Kind: Kind;
    /// What resolving gives: the value, or `Option` of it for rows without a default.
    type Out;
    /// Applies the default (if any) and checks the bounds; an error names the variable.
    fn resolve(&self, given: Option<<Self::Kind as Kind>::Raw>) -> Result<Self::Out>;
    /// The row as the README shows it.
    fn row(&self) -> Row;
    /// The `--help` line.
    fn help_line(&self) -> String {
        let row = self.row();
        format!("{} [default: {}]", row.help, row.default)
    }
}

impl<K: Kind> Setting for Defaulted<K> {
    type Kind = K;
    type Out = K::Value;
    fn resolve(&self, given: Option<K::Raw>) -> Result<K::Value> {
        K::check(self.env, given.unwrap_or_else(self.default))
    }
    fn row(&self) -> Row {
        Row {
            env: self.env,
            flag: self.flag,
            key: self.key,
            default: K::show(&(self.default)()),
            help: self.help,
            per_projection: self.per_projection,
        }
    }
}

impl<K: Kind> Setting for Optional<K> {
    type Kind = K;
    type Out = Option<K::Value>;
    fn resolve(&self, given: Option<K::Raw>) -> Result<Option<K::Value>> {
        given.map(|v| K::check(self.env, v)).transpose()
    }
    fn row(&self) -> Row {
        Row {
            env: self.env,
            flag: self.flag,
            key: self.key,
            default: self.unset.to_owned(),
            help: self.help,
            per_projection: false,
        }
    }
    fn help_line(&self) -> String {
        if self.required {
            self.help.to_owned()
        } else {
            format!("{} [default: {}]", self.help, self.unset)
        }
    }
}

/// A checked value into its [`Tuning`] field's type (the bounds make this infallible in practice).
fn fit<V, F: TryFrom<V>>(key: &str, v: V) -> Result<F> {
    F::try_from(v).map_err(|_| Error::config(key, "out of range"))
}

/// The table's grammar. Each row is
/// `key: Kind = (default), "ENV_NAME", "flag", "help";` where `(default)` is a value,
/// `(unset "what then")` or `(required "what then")`; rows under `per_projection` add
/// `=> tuning_field` after the key and may also be set in a `[[projection]]`.
macro_rules! settings {
    (@ty $k:ty, (unset $s:literal)) => { Optional<$k> };
    (@ty $k:ty, (required $s:literal)) => { Optional<$k> };
    (@ty $k:ty, ($d:expr)) => { Defaulted<$k> };
    (@row $k:ty, (unset $s:literal), $key:ident, $env:literal, $flag:literal, $help:literal, $pp:literal) => {
        Optional { key: stringify!($key), env: $env, flag: $flag, help: $help, unset: $s, required: false, kind: PhantomData }
    };
    (@row $k:ty, (required $s:literal), $key:ident, $env:literal, $flag:literal, $help:literal, $pp:literal) => {
        Optional { key: stringify!($key), env: $env, flag: $flag, help: $help, unset: $s, required: true, kind: PhantomData }
    };
    (@row $k:ty, ($d:expr), $key:ident, $env:literal, $flag:literal, $help:literal, $pp:literal) => {
        Defaulted { key: stringify!($key), env: $env, flag: $flag, help: $help, default: || $d, per_projection: $pp }
    };
    (
        per_projection {
            $( $pkey:ident => $field:ident : $pkind:ty = $pdef:tt, $penv:literal, $pflag:literal, $phelp:literal; )*
        }
        host {
            $( $hkey:ident : $hkind:ty = $hdef:tt, $henv:literal, $hflag:literal, $hhelp:literal; )*
        }
    ) => {
        /// The table's rows, one descriptor per setting, named by its TOML key.
        #[allow(non_upper_case_globals)]
        pub mod table {
            use super::*;
            $(
                #[doc = $phelp]
                pub const $pkey: settings!(@ty $pkind, $pdef) =
                    settings!(@row $pkind, $pdef, $pkey, $penv, $pflag, $phelp, true);
            )*
            $(
                #[doc = $hhelp]
                pub const $hkey: settings!(@ty $hkind, $hdef) =
                    settings!(@row $hkind, $hdef, $hkey, $henv, $hflag, $hhelp, false);
            )*
            /// Every row, in table order.
            pub fn rows() -> Vec<Row> {
                vec![$( $pkey.row(), )* $( $hkey.row(), )*]
            }
        }

        /// Settings given as flags or environment variables (flags win), one per table row. All
        /// optional here; the file and the defaults fill the gaps in [`Settings::resolve`].
        #[derive(Debug, Default, Args)]
        pub struct Overrides {
            $(
                #[doc = $phelp]
                #[arg(
                    long = table::$pkey.flag,
                    env = table::$pkey.env,
                    value_name = table::$pkey.env,
                    help = table::$pkey.help_line(),
                    value_parser = <$pkind as Kind>::parse,
                    allow_negative_numbers = <$pkind as Kind>::NEGATIVE,
                    hide_env_values = <$pkind as Kind>::SECRET,
                )]
                pub $pkey: Option<<$pkind as Kind>::Raw>,
            )*
            $(
                #[doc = $hhelp]
                #[arg(
                    long = table::$hkey.flag,
                    env = table::$hkey.env,
                    value_name = table::$hkey.env,
                    help = table::$hkey.help_line(),
                    value_parser = <$hkind as Kind>::parse,
                    allow_negative_numbers = <$hkind as Kind>::NEGATIVE,
                    hide_env_values = <$hkind as Kind>::SECRET,
                )]
                pub $hkey: Option<<$hkind as Kind>::Raw>,
            )*
        }

        /// The TOML file's shape: a global key per row, and the projections. Unknown keys are
        /// errors.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $pkey: Option<<$pkind as Kind>::Raw>, )*
            $( $hkey: Option<<$hkind as Kind>::Raw>, )*
            #[serde(default)]
            projection: Vec<FileProjection>,
        }

        /// One `[[projection]]`: a key per `per_projection` row, and what is not a scalar.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileProjection {
            name: String,
            plugin: PathBuf,
            #[serde(default)]
            ordering: Ordering,
            $( $pkey: Option<<$pkind as Kind>::Raw>, )*
            #[serde(default)]
            config: BTreeMap<String, String>,
            #[serde(default)]
            grants: Grants,
            memory_limit_mib: Option<u64>,
            #[serde(default)]
            sources: BTreeMap<String, String>,
        }

        /// The host-wide rows, resolved.
        struct Host {
            $( $hkey: <settings!(@ty $hkind, $hdef) as Setting>::Out, )*
        }

        /// The host-wide rows: flag or variable, else the file, else the default; checked.
        fn resolve_host(over: &Overrides, file: &FileConfig) -> Result<Host> {
            Ok(Host {
                $( $hkey: table::$hkey.resolve(over.$hkey.clone().or_else(|| file.$hkey.clone()))?, )*
            })
        }

        /// The global tuning: flag or variable, else the file, else the default; checked.
        fn resolve_tuning(over: &Overrides, file: &FileConfig) -> Result<Tuning> {
            Ok(Tuning {
                $( $field: fit(
                    table::$pkey.env,
                    table::$pkey.resolve(over.$pkey.clone().or_else(|| file.$pkey.clone()))?,
                )?, )*
            })
        }

        /// A projection's tuning: its own keys, else the global tuning.
        fn projection_tuning(
            p: &FileProjection,
            key: &dyn Fn(&str) -> String,
            global: &Tuning,
        ) -> Result<Tuning> {
            Ok(Tuning {
                $( $field: match &p.$pkey {
                    Some(raw) => {
                        let key = key(table::$pkey.key);
                        fit(&key, <$pkind as Kind>::check(&key, raw.clone())?)?
                    }
                    None => global.$field.clone(),
                }, )*
            })
        }
    };
}

settings! {
    per_projection {
        concurrency => concurrency: Count<256> = (2),
            "OUTBOX_CONCURRENCY", "concurrency",
            "claim loops per projection in this host";
        batch_size => batch_size: Count<10_000> = (500),
            "OUTBOX_BATCH_SIZE", "batch-size",
            "events per batch";
        events_per_aggregate => events_per_aggregate: Count<10_000> = (1),
            "OUTBOX_EVENTS_PER_AGGREGATE", "events-per-aggregate",
            "with ordering `aggregate`: consecutive events of one aggregate one batch may carry, handed to the plugin in seq order (1 = the contract 0.1.0 guarantee)";
        lease_seconds => lease: Seconds = (30.0),
            "OUTBOX_LEASE_SECONDS", "lease-seconds",
            "claim lease; renewed during long batches, after it another host may reclaim the work";
        max_processing_seconds => max_processing: Seconds = (60.0),
            "OUTBOX_MAX_PROCESSING_SECONDS", "max-processing-seconds",
            "bound on one batch; the plugin call is interrupted there";
        max_attempts => max_attempts: Count<1_000> = (5),
            "OUTBOX_MAX_ATTEMPTS", "max-attempts",
            "attempts before a transient failure is terminal";
        base_backoff_seconds => base_backoff: Seconds = (1.0),
            "OUTBOX_BASE_BACKOFF_SECONDS", "base-backoff-seconds",
            "first retry delay";
        max_backoff_seconds => max_backoff: Seconds = (300.0),
            "OUTBOX_MAX_BACKOFF_SECONDS", "max-backoff-seconds",
            "longest retry delay";
        max_payload_bytes => max_payload_bytes: Count<{ 1 << 30 }> = (1 << 20),
            "OUTBOX_MAX_PAYLOAD_BYTES", "max-payload-bytes",
            "larger payloads fail (`payload_too_large`) without being read into the host; so do headers over 64 KiB and event types, aggregate types and ids over 1,024 bytes (`headers_too_large`, `event_type_too_long`, ...)";
        batch_max_bytes => batch_max_bytes: Count<{ 1 << 30 }> = (4 << 20),
            "OUTBOX_BATCH_MAX_BYTES", "batch-max-bytes",
            "payload bytes one batch may carry, whatever its event count (a batch always carries its first event, so an event up to max-payload-bytes still goes)";
        unknown_event_types => unknown_event_types: Choice<UnknownEventTypes> = (UnknownEventTypes::Deliver),
            "OUTBOX_UNKNOWN_EVENT_TYPES", "unknown-event-types",
            "events of a type the plugin's `describe()` does not declare: `deliver`, `skip` (done without the plugin) or `fail` (`unknown_event_type`)";
    }
    host {
        database_url: Secret = (required "required"),
            "DATABASE_URL", "database-url",
            "Postgres connection URL";
        worker_id: Text = (unset "`<hostname>-<pid>`"),
            "OUTBOX_WORKER_ID", "worker-id",
            "`claimed_by` of this host's claims";
        poll_interval_seconds: Seconds = (1.0),
            "OUTBOX_POLL_INTERVAL_SECONDS", "poll-interval-seconds",
            "fallback polling when no NOTIFY comes, and for retries coming due";
        reclaim_interval_seconds: Seconds = (5.0),
            "OUTBOX_RECLAIM_INTERVAL_SECONDS", "reclaim-interval-seconds",
            "stuck-work sweep interval";
        http_port: Port = (8080),
            "OUTBOX_HTTP_PORT", "http-port",
            "port of `/healthz`, `/readyz`, `/metrics` and the admin API";
        metrics_port: Port = (unset "= HTTP port"),
            "OUTBOX_METRICS_PORT", "metrics-port",
            "a separate port for `/metrics`";
        http_host: Address = (IpAddr::from([0, 0, 0, 0])),
            "OUTBOX_HTTP_HOST", "http-host",
            "address the HTTP server binds";
        run_seconds: SecondsOrOff = (0.0),
            "OUTBOX_RUN_SECONDS", "run-seconds",
            "run this long, then stop cleanly (smoke runs); 0 = until signalled";
        dispatch_metric_prefix: Text = ("outbox_dispatch".to_owned()),
            "OUTBOX_DISPATCH_METRIC_PREFIX", "metric-prefix",
            "prefix of the dispatcher metrics";
        metrics_refresh_seconds: Seconds = (5.0),
            "OUTBOX_METRICS_REFRESH_SECONDS", "metrics-refresh-seconds",
            "refresh of SQL-backed gauges (lag, age, stuck, blocked)";
        log_format: Choice<LogFormat> = (LogFormat::Text),
            "OUTBOX_LOG_FORMAT", "log-format",
            "`text` or `json` (stderr; `RUST_LOG` filters)";
        admin_token: Secret = (unset "unset (admin API off)"),
            "OUTBOX_ADMIN_TOKEN", "admin-token",
            "bearer token of the admin API (at least 16 characters)";
        plugin_watch_seconds: SecondsOrOff = (2.0),
            "OUTBOX_PLUGIN_WATCH_SECONDS", "plugin-watch-seconds",
            "how often plugin files are checked for a new version; 0 = off";
        plugin_file_policy: Choice<PluginFilePolicy> = (PluginFilePolicy::Database),
            "OUTBOX_PLUGIN_FILE_POLICY", "plugin-file-policy",
            "at start, when the configured plugin file differs from the database's active version: `database` keeps the database's version unless the file is new to it, `file` activates the file";
        canary_min_events: Count<10_000_000> = (1000),
            "OUTBOX_CANARY_MIN_EVENTS", "canary-min-events",
            "outcomes a canary version handles before it is promoted or rolled back (recorded with the canary when it starts)";
        canary_margin_percent: Count<100> = (5),
            "OUTBOX_CANARY_MARGIN_PERCENT", "canary-margin-percent",
            "percentage points by which a canary's transient or terminal failure rate may exceed the active version's and still be promoted";
        retention_done_seconds: SecondsOrOff = (0.0),
            "OUTBOX_RETENTION_DONE_SECONDS", "retention-done-seconds",
            "delete `done` rows older than this, in the background";
        retention_batch_size: Count<100_000> = (1000),
            "OUTBOX_RETENTION_BATCH_SIZE", "retention-batch-size",
            "rows per retention delete";
        retention_interval_seconds: Seconds = (60.0),
            "OUTBOX_RETENTION_INTERVAL_SECONDS", "retention-interval-seconds",
            "how often retention runs";
        plugin_cache_dir: Text = (unset "`$XDG_CACHE_HOME/projector/components` or `~/.cache/projector/components`"),
            "OUTBOX_PLUGIN_CACHE_DIR", "plugin-cache-dir",
            "compiled plugin code kept across restarts; empty = off";
        elastic_url: Text = (required "required if a projection is granted `search`"),
            "ELASTIC_URL", "elastic-url",
            "search cluster URL";
        elastic_username: Text = (unset "none"),
            "ELASTIC_USERNAME", "elastic-username",
            "basic-auth user (the password must be set too)";
        elastic_password: Secret = (unset "none"),
            "ELASTIC_PASSWORD", "elastic-password",
            "basic-auth password (the user must be set too)";
        elastic_api_key: Secret = (unset "none"),
            "ELASTIC_API_KEY", "elastic-api-key",
            "API key (the encoded form; wins over basic auth)";
        elastic_index: Text = (unset "none"),
            "ELASTIC_INDEX", "elastic-index",
            "`index` for a search projection whose config has none";
    }
}

/// The delivery tuning of a projection nothing configures: the table's defaults.
pub fn default_tuning() -> Tuning {
    resolve_tuning(&Overrides::default(), &FileConfig::default())
        .expect("the table's defaults are within its bounds (tested)")
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
    /// Which version a starting host runs when its file differs from the database's.
    pub plugin_file_policy: PluginFilePolicy,
    /// The decision rule recorded with each canary this host starts.
    pub canary: CanaryRule,
    /// Background deletion of old `done` rows; `None` keeps them.
    pub retention: Option<Retention>,
}

/// When a canary is decided, and how much worse than the active version it may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryRule {
    /// Canary outcomes before the decision.
    pub min_events: i64,
    /// Percentage points by which a canary failure rate may exceed the baseline's.
    pub margin_percent: f64,
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
        let mut file = match config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listed = std::mem::take(&mut file.projection);
        let base_dir = config
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();

        let host = resolve_host(&over, &file)?;
        let database_url = host
            .database_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(missing_database_url)?;
        let worker_id = host.worker_id.clone().unwrap_or_else(default_worker_id);
        if worker_id.trim().is_empty() {
            return Err(Error::config(table::worker_id.env, "must not be empty"));
        }

        let defaults = resolve_tuning(&over, &file)?;
        check_backoff(table::max_backoff_seconds.env, &defaults)?;

        let mut projections: Vec<ProjectionSpec> = Vec::new();
        for (i, p) in listed.into_iter().enumerate() {
            let key = |k: &str| format!("projection[{i}].{k}");
            valid_projection_name(&key("name"), &p.name)?;
            if projections.iter().any(|q| q.name == p.name) {
                return Err(Error::config(
                    key("name"),
                    format!("projection `{}` is listed twice", p.name),
                ));
            }
            let tuning = projection_tuning(&p, &key, &defaults)?;
            check_backoff(&key(table::max_backoff_seconds.key), &tuning)?;
            check_grants(&p.name, &p.grants)?;
            let memory_limit = match p.memory_limit_mib {
                Some(mib) => {
                    let key = key("memory_limit_mib");
                    let mib = i64::try_from(mib).unwrap_or(i64::MAX);
                    fit::<i64, usize>(&key, Count::<4096>::check(&key, mib)?)? * (1 << 20)
                }
                None => projector_core::spec::DEFAULT_MEMORY_BYTES,
            };
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
                memory_limit,
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

        let http_port = host.http_port;
        let metrics_port = host.metrics_port.filter(|p| *p != http_port);
        let metric_prefix = host.dispatch_metric_prefix.clone();
        let prefix_ok = metric_prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && metric_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            return Err(Error::config(
                table::dispatch_metric_prefix.env,
                format!("`{metric_prefix}` is not a valid Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)"),
            ));
        }

        let elastic = resolve_elastic(&host, &mut projections)?;

        let plugin_cache_dir = match &host.plugin_cache_dir {
            Some(dir) if dir.trim().is_empty() => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => default_cache_dir(),
        };

        let admin_token = host.admin_token.clone().filter(|t| !t.is_empty());
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(Error::config(
                table::admin_token.env,
                "must be at least 16 characters",
            ));
        }

        let on = |d: Duration| (d > Duration::ZERO).then_some(d);
        Ok(Settings {
            retention: on(host.retention_done_seconds).map(|done_after| Retention {
                done_after,
                batch_size: host.retention_batch_size,
                interval: host.retention_interval_seconds,
            }),
            plugin_watch: on(host.plugin_watch_seconds),
            plugin_file_policy: host.plugin_file_policy,
            canary: CanaryRule {
                min_events: host.canary_min_events,
                margin_percent: host.canary_margin_percent as f64,
            },
            admin_token,
            plugin_cache_dir,
            elastic,
            database_url,
            worker_id,
            poll_interval: host.poll_interval_seconds,
            reclaim_interval: host.reclaim_interval_seconds,
            metrics_port,
            http_port,
            http_host: host.http_host,
            run_for: on(host.run_seconds),
            metric_prefix,
            metrics_refresh: host.metrics_refresh_seconds,
            log_format: host.log_format,
            projections,
        })
    }
}

/// The search cluster settings, required when a projection is granted `search`. A search
/// projection without an `index` in its config gets the global `elastic_index`. An empty value
/// counts as unset.
fn resolve_elastic(
    host: &Host,
    projections: &mut [ProjectionSpec],
) -> Result<Option<ElasticSettings>> {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let index = given(&host.elastic_index);
    let searching: Vec<&mut ProjectionSpec> = projections
        .iter_mut()
        .filter(|p| p.grants.search())
        .collect();
    if searching.is_empty() {
        return Ok(None);
    }
    let url_env = table::elastic_url.env;
    let url = given(&host.elastic_url).ok_or_else(|| {
        Error::config(
            url_env,
            format!(
                "not set, but projection `{}` is granted `search`",
                searching[0].name
            ),
        )
    })?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::config(
            url_env,
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
    let (user_env, password_env) = (table::elastic_username.env, table::elastic_password.env);
    let basic_auth = match (given(&host.elastic_username), given(&host.elastic_password)) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::config(
                password_env,
                format!("{user_env} is set but the password is not"),
            ))
        }
        (None, Some(_)) => {
            return Err(Error::config(
                user_env,
                format!("{password_env} is set but the user is not"),
            ))
        }
    };
    Ok(Some(ElasticSettings {
        url,
        basic_auth,
        api_key: given(&host.elastic_api_key),
    }))
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

/// The database a one-shot command works on: the table's `database_url` row on its own.
#[derive(Debug, Args)]
pub struct Database {
    /// Postgres connection URL.
    #[arg(
        long = table::database_url.flag,
        env = table::database_url.env,
        value_name = table::database_url.env,
        help = table::database_url.help_line(),
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

impl Database {
    /// The URL, or the error naming the variable when it is missing.
    pub fn url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(missing_database_url)
    }
}

fn missing_database_url() -> Error {
    let d = &table::database_url;
    Error::config(
        d.env,
        format!("not set: pass --{} or set {}", d.flag, d.env),
    )
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

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
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
        assert_eq!(s.projections[0].tuning.batch_size, 500);
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

    #[test]
    fn the_defaults_are_within_their_bounds() {
        let t = default_tuning();
        assert_eq!(t.batch_size, 500);
        assert_eq!(t.batch_max_bytes, 4 << 20);
        assert_eq!(t.max_backoff, Duration::from_secs(300));
        check_backoff("default", &t).unwrap();
        let s = Settings::resolve(over(), None, &["a=x.wasm".into()]).unwrap();
        assert_eq!(s.projections[0].tuning, t);
        assert_eq!(s.http_port, 8080);
        assert_eq!(s.retention, None);
    }

    #[test]
    fn the_admin_token_can_come_from_the_file_and_the_variable_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "admin_token = \"from-the-file-0123456789\"\n").unwrap();
        let s = Settings::resolve(over(), Some(&path), &["a=x.wasm".into()]).unwrap();
        assert_eq!(s.admin_token.as_deref(), Some("from-the-file-0123456789"));
        let mut o = over();
        o.admin_token = Some("from-the-flag-0123456789".into());
        let s = Settings::resolve(o, Some(&path), &["a=x.wasm".into()]).unwrap();
        assert_eq!(s.admin_token.as_deref(), Some("from-the-flag-0123456789"));
        std::fs::write(&path, "admin_token = \"short\"\n").unwrap();
        let err = Settings::resolve(over(), Some(&path), &["a=x.wasm".into()]).unwrap_err();
        assert!(err.to_string().starts_with("OUTBOX_ADMIN_TOKEN:"), "{err}");
    }

    #[test]
    fn a_toml_key_is_its_variable_lowercased_without_outbox() {
        for row in table::rows() {
            let lower = row.env.to_lowercase();
            assert_eq!(row.key, lower.trim_start_matches("outbox_"), "{row:?}");
        }
    }

    /// The README's settings table is the table above, row for row (in any order): variable,
    /// flag, default and meaning; and its list of per-projection keys is the `per_projection`
    /// rows.
    #[test]
    fn the_readme_settings_table_is_the_table() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Settings\n")
            .nth(1)
            .expect("README has a `## Settings` section");
        let header = "| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n";
        let body = section
            .split(header)
            .nth(1)
            .expect("the settings section has the settings table");
        let mut documented: Vec<&str> = body.lines().take_while(|l| l.starts_with('|')).collect();
        let rows = table::rows();
        let mut declared: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "| `{}` | `--{}` | {} | {} |",
                    r.env, r.flag, r.default, r.help
                )
            })
            .collect();
        documented.sort_unstable();
        declared.sort_unstable();
        let missing: Vec<&String> = declared
            .iter()
            .filter(|r| !documented.contains(&r.as_str()))
            .collect();
        let stale: Vec<&&str> = documented
            .iter()
            .filter(|r| !declared.iter().any(|d| d == *r))
            .collect();
        assert!(
            missing.is_empty() && stale.is_empty() && documented.len() == declared.len(),
            "README.md's settings table differs from the table in settings.rs\n\
             declared but not in the README: {missing:#?}\nin the README but not declared: {stale:#?}"
        );
        let per_projection: Vec<String> = rows
            .iter()
            .filter(|r| r.per_projection)
            .map(|r| format!("`{}`", r.key))
            .collect();
        let sentence = format!("per projection: {}.", per_projection.join(", "));
        assert!(
            section.replace('\n', " ").contains(&sentence),
            "README.md's settings section should list the per-projection keys as `{sentence}`"
        );
    }
}
