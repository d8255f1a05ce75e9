//! What one `projector bench` run is asked to do (`BenchArgs`) and, checked, what it will do
//! (`Plan`): sizes, the components it loads, where the search server and the report are.

use clap::Args;
use projector_core::{Error, Result};
use projector_service::settings::Database;
use std::path::PathBuf;

/// Arguments of `projector bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events per drain measurement (raw ceiling, noop, chronicle-entries, search-index).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub events: u32,
    /// Events for the search runs (the `_bulk` ceiling and search-index). Smaller than --events
    /// by default: the search server, not projector, bounds them (osmem-server takes a few
    /// thousand documents per second at best), and 200k would not fit the 10-minute budget.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub search_events: u32,
    /// Events per batch, for the raw loop and the host alike (default: the host's default).
    #[arg(long, default_value_t = projector_service::settings::default_tuning().batch_size as u32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Claim loops, for the raw loop and the host alike.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Offered rate of the pickup-latency run, events per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// How long the pickup-latency run offers events, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub latency_seconds: u32,
    /// `done` rows in the table for the large-table claim run.
    #[arg(long, default_value_t = 5_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub done_rows: u64,
    /// Events of the skewed-stream runs (and of the uniform drain they are compared with).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub skew_events: u32,
    /// Hot aggregates of the skewed stream.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub skew_hot_aggregates: u32,
    /// Percentage of the skewed stream's events on its hot aggregates (the rest are on one
    /// aggregate each).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub skew_hot_percent: u32,
    /// Events of the long drain (over events/10 aggregates), read in tenths.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u32).range(20..))]
    pub long_events: u32,
    /// Batch sizes of the sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,500,1000",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub sweep_batch_sizes: Vec<u32>,
    /// Events per drain of the sweep.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sweep_events: u32,
    /// Whether each batch size of the sweep also gets its two raw ceilings (two more drains per
    /// batch size).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sweep_ceilings: bool,
    /// Events of the multi-host runs (one host, then --hosts hosts, on the same events).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub multi_host_events: u32,
    /// Hosts of the multi-host run, each with --concurrency claim loops.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub hosts: u32,
    /// Alternating pairs of multi-host drains (1 host, then --hosts hosts, again and again): the
    /// rows report the median of each side and of the pairs' ratios. On a shared machine one
    /// pair cannot tell a 10 % change from noise.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=15))]
    pub multi_host_pairs: u32,
    /// Where the `noop`, `chronicle_entries` and `search_index` components are.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    pub plugins_dir: PathBuf,
    /// Where the JSON report is written.
    #[arg(long, default_value = "bench-results.json")]
    pub json: PathBuf,
    /// The search server (OpenSearch/Elasticsearch API) for the search-index runs.
    #[arg(long, env = projector_service::settings::table::elastic_url.env)]
    pub elastic_url: Option<String>,
    /// A server to benchmark on (a database of its own is created there and dropped after).
    #[command(flatten)]
    pub db: Database,
}

/// Everything a run needs, validated.
pub(crate) struct Plan {
    pub(crate) events: i64,
    pub(crate) search_events: i64,
    pub(crate) batch_size: i64,
    pub(crate) concurrency: usize,
    pub(crate) rate: u32,
    pub(crate) latency_seconds: u32,
    pub(crate) done_rows: i64,
    pub(crate) skew_events: i64,
    pub(crate) skew_hot: i64,
    pub(crate) skew_hot_percent: i64,
    pub(crate) long_events: i64,
    pub(crate) sweep_batch_sizes: Vec<i64>,
    pub(crate) sweep_events: i64,
    pub(crate) sweep_ceilings: bool,
    pub(crate) multi_host_events: i64,
    pub(crate) hosts: usize,
    pub(crate) multi_host_pairs: usize,
    pub(crate) plugins: Plugins,
    pub(crate) json: PathBuf,
    pub(crate) elastic_url: String,
    pub(crate) admin_url: String,
}

/// The three components the runs load.
pub(crate) struct Plugins {
    pub(crate) noop: PathBuf,
    pub(crate) chronicle: PathBuf,
    pub(crate) search: PathBuf,
}

/// Checks `args` and finds the components.
pub(crate) fn validate(args: BenchArgs) -> Result<Plan> {
    let admin_url = args.db.url()?.to_owned();
    let elastic_url = args
        .elastic_url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Error::config(
                "ELASTIC_URL",
                "not set: the search-index runs need a search server (pass --elastic-url or set \
                 ELASTIC_URL; scripts/bench starts osmem-server)",
            )
        })?;
    let component = |name: &str| -> Result<PathBuf> {
        let path = args.plugins_dir.join(format!("{name}.wasm"));
        if !path.is_file() {
            return Err(Error::config(
                "--plugins-dir",
                format!(
                    "no {} (build the plugins: cargo build --manifest-path plugins/Cargo.toml \
                     --target wasm32-wasip2 --release)",
                    path.display()
                ),
            ));
        }
        std::path::absolute(&path).map_err(|e| Error::config("--plugins-dir", e.to_string()))
    };
    Ok(Plan {
        events: args.events.into(),
        search_events: args.search_events.into(),
        batch_size: args.batch_size.into(),
        concurrency: args.concurrency as usize,
        rate: args.rate,
        latency_seconds: args.latency_seconds,
        done_rows: i64::try_from(args.done_rows)
            .map_err(|_| Error::config("--done-rows", "too large"))?,
        skew_events: args.skew_events.into(),
        skew_hot: args.skew_hot_aggregates.into(),
        skew_hot_percent: args.skew_hot_percent.into(),
        long_events: args.long_events.into(),
        sweep_batch_sizes: args.sweep_batch_sizes.into_iter().map(i64::from).collect(),
        sweep_events: args.sweep_events.into(),
        sweep_ceilings: args.sweep_ceilings,
        multi_host_events: args.multi_host_events.into(),
        hosts: args.hosts as usize,
        multi_host_pairs: args.multi_host_pairs as usize,
        plugins: Plugins {
            noop: component("noop")?,
            chronicle: component("chronicle_entries")?,
            search: component("search_index")?,
        },
        json: args.json,
        elastic_url: elastic_url.trim_end_matches('/').to_owned(),
        admin_url,
    })
}
