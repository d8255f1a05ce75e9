//! `projector` as a child process: a running host ([`RunCommand`] → [`ChildHost`]) to wait for,
//! talk to over HTTP, signal, measure and stop, and one-shot commands ([`run_once`]).
//!
//! Invariants kept here:
//! - A [`ChildHost`] owns its process: dropping the handle kills and reaps a host still running,
//!   whatever path (an error, a panic, an early return) dropped it.
//! - Every child gets SIGKILL when the thread that spawned it dies, so a caller killed outright
//!   (a CI timeout, SIGKILL) leaves no host behind. Linux ties this to the spawning *thread*:
//!   spawn from a thread that lives as long as the child (a test's own thread, a runtime worker),
//!   never from `spawn_blocking` or inside `block_in_place`, whose threads exit when idle.
//! - A child's environment is scrubbed of the caller's settings (see [`projector_command`]); a
//!   host listens on 127.0.0.1 on the port [`ChildHost::port`] reports, set after the caller's
//!   environment so that nothing the caller passes in the environment can move it.
//! - A host's stdout and stderr both go to its log file, which outlives the process (for the
//!   handle's lifetime) so that a failure can be explained after the exit.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, Error};

/// How many lines of a child's log an [`Error`] carries.
const LOG_TAIL_LINES: usize = 40;

/// How long one HTTP request to a host may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A command running `exe` whose environment holds nothing of the caller's settings: no inherited
/// `OUTBOX_*`, `ELASTIC_*`, `OTEL_*`, `DATABASE_URL` or `RUST_LOG`, so the child runs with
/// exactly what the caller then adds. Its stdin is closed, and it gets SIGKILL when the spawning
/// thread dies (see the module docs).
pub fn projector_command(exe: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(exe);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("OUTBOX_")
            || name.starts_with("ELASTIC_")
            || name.starts_with("OTEL_")
            || name == "DATABASE_URL"
            || name == "RUST_LOG"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches nothing but the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a one-shot `exe <args>` (`migrate`, `run --help`, a `run` that should refuse to start,
/// ...) with `env` added to a scrubbed environment, and returns its output. A command still
/// running after `timeout` is killed and is an [`Error::StillRunning`] carrying its output.
pub fn run_once(
    exe: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, Error> {
    let dir = tempfile::tempdir().map_err(Error::io("creating a temp dir"))?;
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let create = |path: &Path| File::create(path).map_err(Error::io(path.display().to_string()));
    let mut child = projector_command(exe)
        .args(args)
        .envs(env.iter().copied())
        .stdout(create(&stdout_path)?)
        .stderr(create(&stderr_path)?)
        .spawn()
        .map_err(|source| Error::Spawn {
            exe: exe.to_owned(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let read = |path: &Path| std::fs::read(path).unwrap_or_default();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(Error::io("waiting for projector"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            let mut output = read(&stdout_path);
            output.extend(read(&stderr_path));
            return Err(Error::StillRunning {
                label: format!("projector {}", args.join(" ")),
                timeout,
                log_tail: tail(&String::from_utf8_lossy(&output), LOG_TAIL_LINES),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    })
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How to start a `projector run`: the binary, its arguments after `run`, its environment and
/// where its log goes. [`RunCommand::spawn`] picks the port.
#[derive(Debug, Clone)]
pub struct RunCommand {
    exe: PathBuf,
    label: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
}

impl RunCommand {
    /// `exe run`, labelled `projector`, logging to a temp dir of the handle's own.
    pub fn new(exe: impl Into<PathBuf>) -> RunCommand {
        RunCommand {
            exe: exe.into(),
            label: "projector".to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            log: None,
        }
    }

    /// Names the host in errors (a worker id, a bench run's name).
    pub fn label(mut self, label: impl Into<String>) -> RunCommand {
        self.label = label.into();
        self
    }

    /// Adds an argument after `run`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> RunCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments after `run`.
    pub fn args<I, S>(mut self, args: I) -> RunCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `key=value` in the child's environment (a later value for the same key wins).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> RunCommand {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets each `key=value` in the child's environment, in order.
    pub fn envs<I, K, V>(mut self, vars: I) -> RunCommand
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    /// Writes the host's stdout and stderr to `path` (created or truncated) instead of a temp
    /// file.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> RunCommand {
        self.log = Some(path.into());
        self
    }

    /// Starts `exe run <args>` on a free port of 127.0.0.1 (`OUTBOX_HTTP_HOST`,
    /// `OUTBOX_HTTP_PORT`). Spawn from a thread that outlives the host (see the module docs).
    pub fn spawn(self) -> Result<ChildHost, Error> {
        let port = free_port().map_err(Error::io("finding a free port"))?;
        let (dir, log_path) = match self.log {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("projector-host-")
                    .tempdir()
                    .map_err(Error::io("creating a temp dir"))?;
                let path = dir.path().join("host.log");
                (Some(dir), path)
            }
        };
        let log = File::create(&log_path)
            .map_err(Error::io(format!("creating {}", log_path.display())))?;
        let log_too = log
            .try_clone()
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let child = projector_command(&self.exe)
            .arg("run")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("OUTBOX_HTTP_HOST", "127.0.0.1")
            .env("OUTBOX_HTTP_PORT", port.to_string())
            .stdout(log_too)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .into();
        Ok(ChildHost {
            child,
            exited: None,
            label: self.label,
            port,
            started_at: Instant::now(),
            log_path,
            agent,
            _dir: dir,
        })
    }
}

/// A running (or exited, not yet dropped) `projector run`. Dropping it kills the process if it is
/// still running.
pub struct ChildHost {
    child: Child,
    /// Set once the process has been reaped: no signal may be sent to its pid after that.
    exited: Option<ExitStatus>,
    label: String,
    port: u16,
    started_at: Instant,
    log_path: PathBuf,
    agent: ureq::Agent,
    _dir: Option<tempfile::TempDir>,
}

impl ChildHost {
    /// The label it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When it was spawned.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The HTTP client the handle uses: no proxy, statuses are not errors, a 10 s timeout.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// `GET <path>` on the host: `Some((status, body))`, or `None` if nothing answered.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&self.agent, &self.url(path))
    }

    /// Whether `GET /readyz` answers 200 right now.
    pub fn is_ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// `Ok` while the process runs; [`Error::Exited`] once it has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.try_exit_status()? {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                label: self.label.clone(),
                status,
                log_tail: self.log_tail(LOG_TAIL_LINES),
            }),
        }
    }

    /// One step of waiting for readiness, given whether `/readyz` just answered 200: `Ok(true)`
    /// when ready, `Ok(false)` to keep waiting, an error if the host exited or time is up.
    fn ready_step(
        &mut self,
        ready: bool,
        started: Instant,
        timeout: Duration,
    ) -> Result<bool, Error> {
        if ready {
            return Ok(true);
        }
        self.check_running()?;
        if started.elapsed() >= timeout {
            return Err(Error::NotReady {
                label: self.label.clone(),
                timeout,
                last: self.get("/readyz"),
                log_tail: self.log_tail(LOG_TAIL_LINES),
            });
        }
        Ok(false)
    }

    /// Polls `GET /readyz` until it answers 200, blocking the calling thread. An error if the
    /// process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        while !self.ready_step(self.is_ready(), started, timeout)? {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// [`ChildHost::wait_ready`] for async callers: the probes run on tokio's blocking pool and
    /// the pauses do not hold the runtime's thread.
    pub async fn wait_ready_async(&mut self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let (agent, url) = (self.agent.clone(), self.url("/readyz"));
            let ready =
                tokio::task::spawn_blocking(move || matches!(get(&agent, &url), Some((200, _))))
                    .await
                    .unwrap_or(false);
            if self.ready_step(ready, started, timeout)? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (a no-op once the process has been reaped, so a recycled pid is never hit).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped (exited is None).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends SIGTERM: the host finishes its in-flight batches and exits 0.
    pub fn terminate(&self) -> io::Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(Error::io(format!("waiting for `{}`", self.label)))?;
        }
        Ok(self.exited)
    }

    /// Waits until the process has exited and returns how; [`Error::StillRunning`] if it has not
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        self.wait_exit_until(Instant::now() + timeout, timeout)
    }

    fn wait_exit_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<ExitStatus, Error> {
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::StillRunning {
                    label: self.label.clone(),
                    timeout,
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the clean exit (status 0) the host promises.
    pub fn stop(self, timeout: Duration) -> Result<(), Error> {
        stop_all(vec![self], timeout)
    }

    /// The peak resident set of the process so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> io::Result<f64> {
        crate::memory::peak_rss_mib(self.pid())
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines the process wrote.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }
}

impl Drop for ChildHost {
    fn drop(&mut self) {
        if !matches!(self.try_exit_status(), Ok(Some(_))) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// SIGTERM to every host at once (so they stop in parallel), then waits for each one's clean
/// exit within one shared `timeout`. The first failure is returned; every host is still reaped or
/// killed.
pub fn stop_all(hosts: Vec<ChildHost>, timeout: Duration) -> Result<(), Error> {
    let mut first_error = None;
    for host in &hosts {
        if let Err(source) = host.terminate() {
            first_error.get_or_insert(Error::Io {
                what: format!("SIGTERM to `{}`", host.label),
                source,
            });
        }
    }
    let deadline = Instant::now() + timeout;
    for mut host in hosts {
        let stopped =
            host.wait_exit_until(deadline, timeout)
                .and_then(|status| match status.success() {
                    true => Ok(()),
                    false => Err(Error::UncleanStop {
                        label: host.label.clone(),
                        status,
                        log_tail: host.log_tail(LOG_TAIL_LINES),
                    }),
                });
        if let Err(e) = stopped {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn get(agent: &ureq::Agent, url: &str) -> Option<(u16, String)> {
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Some((status, body))
}
