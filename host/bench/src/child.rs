//! projector under test: a child `projector run` with a generated config, so that its memory is
//! its own to measure (`/proc/PID/status`) and it starts, runs and stops as in production.
//!
//! A child gets exactly the benchmark's settings: the `OUTBOX_*`, `ELASTIC_*` and `DATABASE_URL`
//! variables of the shell running the benchmark are removed from its environment, and only
//! [`HostConfig::env`] is added.

use super::workload::{self, Drain, Latency};
use super::{Plan, Plugins};
use projector_core::{Error, Result};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Memory {
        peak_mib: kib("VmHWM:") / 1024.0,
    }
}

/// A running child host; killed on drop if it was not stopped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Other(anyhow::anyhow!(
                "the projector under test exited ({status}); its log ends:\n{}",
                self.log_tail()
            ))),
            Err(e) => Err(Error::Other(anyhow::anyhow!("waiting for projector: {e}"))),
        }
    }

    /// SIGTERM, then waits for the clean exit the host promises.
    fn stop(self) -> Result<()> {
        stop_all(vec![self])
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    fn wait_stopped(mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| anyhow::anyhow!("waiting for projector: {e}"))?
            {
                return if status.success() {
                    Ok(())
                } else {
                    Err(Error::Other(anyhow::anyhow!(
                        "the projector under test stopped with {status}; its log ends:\n{}",
                        self.log_tail()
                    )))
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::Other(anyhow::anyhow!(
                    "the projector under test did not stop within 60 s of SIGTERM"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM to every host at once, then waits for each one's clean exit.
fn stop_all(hosts: Vec<Running>) -> Result<()> {
    for host in &hosts {
        host.terminate();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_error = None;
    for host in hosts {
        if let Err(e) = host.wait_stopped(deadline) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The host under test gets exactly the benchmark's settings, whatever this shell exports.
fn without_shell_settings(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("OUTBOX_") || k.starts_with("ELASTIC_") || k == "DATABASE_URL" {
            cmd.env_remove(&key);
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| anyhow::anyhow!("finding a free port: {e}"))?;
    Ok(listener
        .local_addr()
        .map_err(|e| anyhow::anyhow!("finding a free port: {e}"))?
        .port())
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
        let mut cmd = Command::new(&self.exe);
        without_shell_settings(&mut cmd);
        let help = cmd
            .args(["run", "--help"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("running {} run --help: {e}", self.exe.display()))?;
        let text = String::from_utf8_lossy(&help.stdout);
        let wanted = format!("--{flag}");
        Ok(text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
            .any(|word| word == wanted))
    }

    /// Starts `projector run` with `projections` and waits until it is ready (plugins loaded).
    async fn start(&self, projections: &[Projection], label: &str) -> Result<Running> {
        let config = self.work.join(format!("{label}.toml"));
        let text: String = projections
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", config.display()))?;
        let log = self.work.join(format!("{label}.log"));
        let port = free_port()?;
        let mut cmd = Command::new(&self.exe);
        without_shell_settings(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--database-url", &self.database_url])
            .args(["--elastic-url", &self.elastic_url])
            .args(["--batch-size", &self.batch_size.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--http-port", &port.to_string()])
            .args(["--http-host", "127.0.0.1"])
            .arg("--plugin-cache-dir")
            .arg(self.work.join("cache"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", log.display()))?,
            );
        // If the benchmark dies, so does the host it started (it would otherwise keep draining).
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.exe.display()))?;
        let mut running = Running { child, log };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            running.alive()?;
            let agent = agent.clone();
            let url = url.clone();
            let ready = tokio::task::spawn_blocking(move || {
                agent
                    .get(&url)
                    .call()
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if ready {
                return Ok(running);
            }
            if Instant::now() >= deadline {
                return Err(Error::Other(anyhow::anyhow!(
                    "the projector under test was not ready within 120 s; its log ends:\n{}",
                    running.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a host with `projections` until `projection`'s `n` seeded events are done.
    pub async fn drain(
        &self,
        projections: &[Projection],
        pool: &PgPool,
        projection: &str,
        n: i64,
        timeout: Duration,
    ) -> Result<(Drain, Memory)> {
        let mut host = self.start(projections, projection).await?;
        let drain = workload::wait_drained(pool, projection, n, timeout, || host.alive()).await?;
        let mem = memory(host.child.id());
        host.stop()?;
        Ok((drain, mem))
    }

    /// Runs `hosts` hosts with `projections` on the same database until `projection`'s `n` seeded
    /// events are done. The projection is paused while they start and resumed (which wakes them
    /// all) once every one is ready, so none drains alone while the others start. Each host's
    /// worker id is `bench-<projection>-<i>`. Returns the drain of the events that ended `done`
    /// and the highest peak RSS of the hosts.
    pub async fn drain_hosts(
        &self,
        projections: &[Projection],
        pool: &PgPool,
        projection: &str,
        n: i64,
        hosts: usize,
        timeout: Duration,
    ) -> Result<(Drain, Memory)> {
        projector_store::outbox::operator::pause(
            pool,
            projection,
            "projector bench",
            Some("hosts starting"),
        )
        .await?;
        let mut running = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let host = self.with_env("OUTBOX_WORKER_ID", &format!("bench-{projection}-{i}"));
            running.push(
                host.start(projections, &format!("{projection}-{i}"))
                    .await?,
            );
        }
        projector_store::outbox::operator::resume(pool, projection).await?;
        workload::wait_settled(pool, projection, n, timeout, || {
            running.iter_mut().try_for_each(Running::alive)
        })
        .await?;
        // Not held to `n` done here: the caller counts lost and duplicated events itself.
        let drain = workload::drained(pool, projection).await?;
        let peak_mib = running
            .iter()
            .map(|h| memory(h.child.id()).peak_mib)
            .fold(0.0, f64::max);
        stop_all(running)?;
        Ok((drain, Memory { peak_mib }))
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
                host.alive()
            })
            .await?;
        host.stop()?;
        Ok(latency)
    }
}
