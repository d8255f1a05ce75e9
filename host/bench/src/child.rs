//! projector under test: a child `projector run` with a generated config, so that its memory is
//! its own to measure (`/proc/PID/status`) and it starts, runs and stops as in production.
//!
//! A child gets exactly the benchmark's settings: the shell's `OUTBOX_*`, `ELASTIC_*`, `OTEL_*`,
//! `DATABASE_URL` and `RUST_LOG` are removed from its environment, and only [`HostConfig::env`]
//! is added. Starting, waiting for and stopping the child is the harness the integration tests
//! use too (`projector-test-support`), which also kills a child whose handle drops.

use crate::cpu::{CpuUse, Meter};
use crate::plan::{Plan, Plugins};
use crate::workload::{self, Drain, Latency};
use projector_core::{Error, Result};
use projector_test_support::{run_once, stop_all, ChildHost, RunCommand};
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Duration;

/// How the child hosts run.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The `projector` binary (this one).
    pub exe: PathBuf,
    pub database_url: String,
    pub elastic_url: String,
    pub batch_size: i64,
    pub concurrency: usize,
    /// Config files, logs and the compiled-component cache go here.
    pub work: PathBuf,
    /// Variables set in the child's environment (`OUTBOX_*` settings).
    pub env: Vec<(String, String)>,
}

/// One `[[projection]]` of the generated config.
pub struct Projection(String);

impl Projection {
    pub fn noop(name: &str, plugins: &Plugins) -> Projection {
        Projection(format!(
            "[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\n",
            plugins.noop.display()
        ))
    }

    pub fn chronicle(name: &str, plugins: &Plugins) -> Projection {
        Projection(format!(
            "[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\n\
             [projection.grants]\nsql_tables = [\"chronicle_entries\"]\n",
            plugins.chronicle.display()
        ))
    }

    pub fn search(name: &str, index: &str, plugins: &Plugins) -> Projection {
        Projection(format!(
            "[[projection]]\nname = \"{name}\"\nplugin = \"{}\"\n\
             [projection.grants]\nsearch_indices = [\"{index}\"]\n\
             [projection.config]\nindex = \"{index}\"\n",
            plugins.search.display()
        ))
    }
}

/// Resident memory of the child, read from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmHWM: the peak resident set.
    pub peak_mib: f64,
}

/// The peak resident set of `host` (0 if `/proc` cannot say: the report then shows 0, not a
/// failed run).
fn memory(host: &ChildHost) -> Memory {
    Memory {
        peak_mib: host.peak_rss_mib().unwrap_or(0.0),
    }
}

/// How long a host is given to load its plugins and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long hosts are given to stop cleanly after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the harness reports (the child's exit, readiness, stop, each with its log's end) becomes
/// the bench's error.
fn harness(e: projector_test_support::Error) -> Error {
    Error::Other(e.into())
}

impl HostConfig {
    /// The same hosts with `batch_size` events per batch.
    pub fn with_batch_size(&self, batch_size: i64) -> HostConfig {
        HostConfig {
            batch_size,
            ..self.clone()
        }
    }

    /// The same hosts with `key=value` in their environment.
    pub fn with_env(&self, key: &str, value: &str) -> HostConfig {
        let mut config = self.clone();
        config.env.retain(|(k, _)| k != key);
        config.env.push((key.to_owned(), value.to_owned()));
        config
    }

    /// Whether `projector run` (this binary) has the flag `--flag`: settings the bench passes
    /// through the environment are ignored by a host without them, and the report says so.
    pub fn run_has_flag(&self, flag: &str) -> Result<bool> {
        let help = run_once(&self.exe, &["run", "--help"], &[], STOP_TIMEOUT).map_err(harness)?;
        let text = String::from_utf8_lossy(&help.stdout);
        let wanted = format!("--{flag}");
        Ok(text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
            .any(|word| word == wanted))
    }

    /// Starts `projector run` with `projections` and waits until it is ready (plugins loaded).
    async fn start(&self, projections: &[Projection], label: &str) -> Result<ChildHost> {
        let config = self.work.join(format!("{label}.toml"));
        let text: String = projections
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", config.display()))?;
        // Spawned here, on a runtime worker: the child dies with this thread, i.e. with the
        // benchmark (it would otherwise keep draining).
        let mut host = RunCommand::new(&self.exe)
            .label(label)
            .arg("--config")
            .arg(&config)
            .args(["--database-url", &self.database_url])
            .args(["--elastic-url", &self.elastic_url])
            .args(["--batch-size", &self.batch_size.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .arg("--plugin-cache-dir")
            .arg(self.work.join("cache"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .log_file(self.work.join(format!("{label}.log")))
            .spawn()
            .map_err(harness)?;
        host.wait_ready_async(READY_TIMEOUT)
            .await
            .map_err(harness)?;
        Ok(host)
    }

    /// Runs a host with `projections` until `projection`'s `n` seeded events are done, and
    /// meters the CPU the drain used (the projection is paused while the host starts, so its
    /// start-up, plugin compilation included, is not in the figure).
    pub async fn drain(
        &self,
        projections: &[Projection],
        pool: &PgPool,
        projection: &str,
        n: i64,
        timeout: Duration,
    ) -> Result<(Drain, Memory, CpuUse)> {
        let (drain, memory, cpu) = self
            .drain_hosts(projections, pool, projection, n, 1, timeout)
            .await?;
        Ok((workload::all_done(drain, projection, n)?, memory, cpu))
    }

    /// Runs `hosts` hosts with `projections` on the same database until `projection`'s `n` seeded
    /// events are settled. The projection is paused while they start and resumed (which wakes
    /// them all) once every one is ready, so none drains alone while the others start, and the
    /// CPU meter runs from the resume to the last settle. Each host's worker id is
    /// `bench-<projection>-<i>` (with more than one host). Returns the drain of the events that
    /// ended `done`, the highest peak RSS of the hosts and the CPU the drain used.
    pub async fn drain_hosts(
        &self,
        projections: &[Projection],
        pool: &PgPool,
        projection: &str,
        n: i64,
        hosts: usize,
        timeout: Duration,
    ) -> Result<(Drain, Memory, CpuUse)> {
        projector_store::outbox::operator::pause(
            pool,
            projection,
            "projector bench",
            Some("hosts starting"),
        )
        .await?;
        let mut running = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let (config, label) = if hosts == 1 {
                (self.clone(), projection.to_owned())
            } else {
                (
                    self.with_env("OUTBOX_WORKER_ID", &format!("bench-{projection}-{i}")),
                    format!("{projection}-{i}"),
                )
            };
            running.push(config.start(projections, &label).await?);
        }
        let meter = Meter::new(pool, running.iter().map(ChildHost::pid).collect()).await;
        let before = meter.sample();
        projector_store::outbox::operator::resume(pool, projection).await?;
        workload::wait_settled(pool, projection, n, timeout, || {
            running
                .iter_mut()
                .try_for_each(|h| h.check_running().map_err(harness))
        })
        .await?;
        let cpu = meter.sample().since(&before);
        // Not held to `n` done here: the caller counts lost and duplicated events itself.
        let drain = workload::drained(pool, projection).await?;
        let peak_mib = running
            .iter()
            .map(|h| memory(h).peak_mib)
            .fold(0.0, f64::max);
        stop_all(running, STOP_TIMEOUT).map_err(harness)?;
        Ok((drain, Memory { peak_mib }, cpu))
    }

    /// Runs a host with `projections` while events of `projection` are offered at `plan.rate`.
    pub async fn latency(
        &self,
        projections: &[Projection],
        pool: &PgPool,
        projection: &str,
        plan: &Plan,
    ) -> Result<Latency> {
        let mut host = self.start(projections, projection).await?;
        // Let the loops settle into their idle wait before offering.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let latency =
            workload::offer_and_measure(pool, projection, plan.rate, plan.latency_seconds, || {
                host.check_running().map_err(harness)
            })
            .await?;
        host.stop(STOP_TIMEOUT).map_err(harness)?;
        Ok(latency)
    }
}
