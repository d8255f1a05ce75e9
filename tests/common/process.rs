//! `projector` as a child process: one-shot commands, and a running host to talk to over HTTP,
//! signal, and read JSON logs from.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::{metric_value, parse_metrics, FAST, PATIENCE};

static PORTS_HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
pub fn free_port() -> u16 {
    let mut handed_out = PORTS_HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A `projector` command whose environment holds nothing of ours: no inherited `OUTBOX_*`,
/// `OTEL_*`, `DATABASE_URL` or `RUST_LOG`.
///
/// The child gets SIGKILL if the thread that spawned it dies, so a test process killed outright
/// (a CI timeout, SIGKILL) leaves no host behind. Linux ties this to the spawning *thread*: spawn
/// from the test's own thread or a runtime worker, not from `spawn_blocking`, whose threads exit
/// when idle.
fn projector_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_projector"));
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("OUTBOX_")
            || key_str.starts_with("OTEL_")
            || key_str == "DATABASE_URL"
            || key_str == "RUST_LOG"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches nothing but the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a one-shot `projector` command (`migrate`, a `run` that should refuse to start, ...) and
/// returns its output. Panics if it has not exited after 60 s.
pub fn run_projector(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = projector_command()
        .args(args)
        .envs(env.iter().copied())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn projector");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for projector") {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "`projector {}` did not exit within {PATIENCE:?}; output:\n{}{}",
                args.join(" "),
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read(&stderr_path).unwrap_or_default(),
    }
}

/// stdout and stderr of an `Output`, for failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `projector run --log-format json ...`, its stdout and stderr in a log file.
/// Dropping it kills the process (and prints the tail of its log if the test is failing).
pub struct Host {
    child: Child,
    exited: Option<ExitStatus>,
    /// The worker id it runs with (`OUTBOX_WORKER_ID`; a random `w-...` unless the test set one).
    pub worker_id: String,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// When it was spawned.
    pub started_at: Instant,
    log_path: PathBuf,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Spawns `projector run --log-format json <args>` with `DATABASE_URL=db_url`, a free
    /// `OUTBOX_HTTP_PORT` on 127.0.0.1, a random `OUTBOX_WORKER_ID`, the `FAST` settings, and
    /// then `env` (which wins over all of those).
    pub fn start(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Host {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("projector-host-")
            .tempdir()
            .expect("temp dir");
        let log_path = dir.path().join("host.log");
        let log = File::create(&log_path).expect("log file");
        let mut worker_id = format!("w-{}", &Uuid::new_v4().simple().to_string()[..8]);
        if let Some((_, id)) = env.iter().rev().find(|(k, _)| *k == "OUTBOX_WORKER_ID") {
            worker_id = id.to_string();
        }
        if let Some(i) = args.iter().position(|a| *a == "--worker-id") {
            worker_id = args
                .get(i + 1)
                .expect("--worker-id takes a value")
                .to_string();
        }
        let child = projector_command()
            .args(["run", "--log-format", "json"])
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("OUTBOX_HTTP_HOST", "127.0.0.1")
            .env("OUTBOX_HTTP_PORT", port.to_string())
            .env("OUTBOX_WORKER_ID", &worker_id)
            .envs(FAST.iter().copied())
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log)
            .spawn()
            .expect("spawn projector run");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Host {
            child,
            exited: None,
            worker_id,
            port,
            started_at: Instant::now(),
            log_path,
            agent,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET <path>` on the host: `Some((status, body))`, or `None` if nothing answered.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut response = self.agent.get(&url).call().ok()?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Some((status, body))
    }

    /// `METHOD <path>` with `body` and, when given, `Authorization: Bearer <token>` (and
    /// `X-Projector-By: test`): the status and the JSON answer (`Null` when not JSON).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = token.map(|t| format!("Bearer {t}"));
        let with_auth = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => req
                .header("Authorization", a)
                .header("X-Projector-By", "test"),
            None => req,
        };
        let response = match method {
            "PUT" => with_auth(self.agent.put(&url)).send(body),
            "POST" => with_auth(self.agent.post(&url)).send(body),
            "GET" => match &auth {
                Some(a) => self.agent.get(&url).header("Authorization", a).call(),
                None => self.agent.get(&url).call(),
            },
            other => panic!("unsupported method {other}"),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Whether `GET /readyz` answers 200 right now.
    pub fn is_ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// Polls `GET /readyz` until it answers 200. Panics (with the log) if the process exits first
    /// or the timeout passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return;
            }
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "host {} exited ({status}) before it was ready; log:\n{}",
                    self.worker_id,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "host {} not ready after {timeout:?} (last /readyz: {:?}); log:\n{}",
                    self.worker_id,
                    self.get("/readyz"),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `/metrics` text. Panics if it does not answer 200.
    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics on host {}: {other:?}", self.worker_id),
        }
    }

    /// The value of the sample named `name` whose labels are exactly `labels` (in any order).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// The sum of all samples named `name` whose labels include `labels` (0 if there are none).
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        parse_metrics(&self.metrics())
            .into_iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .map(|s| s.value)
            .sum()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends SIGSTOP: the host is frozen (holds its connections and claims, renews nothing)
    /// until [`Host::sigcont`] or a SIGKILL.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Sends SIGCONT to a host frozen by [`Host::sigstop`].
    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if self.exited.is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped (exited is None).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait on host");
        }
        self.exited
    }

    /// Waits for the process to exit. Panics (with the log) if it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "host {} still running {timeout:?} after being asked to stop; log:\n{}",
                    self.worker_id,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The JSON records the process wrote so far (lines that are not JSON objects are skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            let mut err = std::io::stderr().lock();
            writeln!(
                err,
                "--- last {} log lines of host {} ---",
                tail.len(),
                self.worker_id
            )
            .ok();
            for line in tail {
                writeln!(err, "{line}").ok();
            }
        }
        if self.try_exit_status().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// `projector rebuild --config <config> --projection <projection> --json <extra...>` with
/// `DATABASE_URL=db_url` and `env`: the process output and the JSON report (`Null` if none).
pub fn run_rebuild(
    db_url: &str,
    config: &Path,
    projection: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Output, serde_json::Value) {
    let mut args = vec![
        "rebuild",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--projection",
        projection,
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut full_env = vec![("DATABASE_URL", db_url), ("OUTBOX_LOG_FORMAT", "text")];
    full_env.extend_from_slice(env);
    let out = run_projector(&args, &full_env);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, report)
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`, ...) in MiB.
fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// The resident set of process `pid` now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS")
}

/// The peak resident set of process `pid` so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmHWM")
}
