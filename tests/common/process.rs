//! `projector` as a child process, for the scenarios: one-shot commands, and a running host to
//! talk to over HTTP, signal, and read JSON logs from. Starting, waiting for and stopping the
//! process is `projector-test-support`'s (shared with `projector bench`); what is here is what a
//! scenario adds on top: the test binary's `projector`, the `FAST` settings, a worker id, the
//! admin API and metrics, and panics that carry the host's log.

use std::io::Write;
use std::path::Path;
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

use projector_test_support::{self as support, ChildHost, RunCommand};
use serde_json::Value;
use uuid::Uuid;

use super::{metric_value, parse_metrics, FAST, PATIENCE};

/// The `projector` binary under test.
fn projector_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_projector"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this test process has not handed
/// out before (the harness's, which also picks every host's port).
pub fn free_port() -> u16 {
    support::free_port().expect("bind an ephemeral port")
}

/// Runs a one-shot `projector` command (`migrate`, a `run` that should refuse to start, ...) and
/// returns its output. Panics if it has not exited after 60 s.
pub fn run_projector(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_projector_within(args, env, PATIENCE)
}

/// [`run_projector`] for a command allowed `timeout` (one that compiles an 18 MB Python
/// component on a loaded machine).
pub fn run_projector_within(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    support::run_once(projector_bin(), args, env, timeout).unwrap_or_else(|e| panic!("{e}"))
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
    child: ChildHost,
    /// The worker id it runs with (`OUTBOX_WORKER_ID`; a random `w-...` unless the test set one).
    pub worker_id: String,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// When it was spawned.
    pub started_at: Instant,
}

impl Host {
    /// Spawns `projector run --log-format json <args>` with `DATABASE_URL=db_url`, a free
    /// `OUTBOX_HTTP_PORT` on 127.0.0.1, a random `OUTBOX_WORKER_ID`, the `FAST` settings, and
    /// then `env` (which wins over all of those but the port).
    pub fn start(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Host {
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
        let child = RunCommand::new(projector_bin())
            .label(&worker_id)
            .args(["--log-format", "json"])
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("OUTBOX_WORKER_ID", &worker_id)
            .envs(FAST.iter().copied())
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        Host {
            worker_id,
            port: child.port(),
            started_at: child.started_at(),
            child,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `GET <path>` on the host: `Some((status, body))`, or `None` if nothing answered.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.child.get(path)
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
        let url = self.child.url(path);
        let agent = self.child.agent();
        let auth = token.map(|t| format!("Bearer {t}"));
        let with_auth = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => req
                .header("Authorization", a)
                .header("X-Projector-By", "test"),
            None => req,
        };
        let response = match method {
            "PUT" => with_auth(agent.put(&url)).send(body),
            "POST" => with_auth(agent.post(&url)).send(body),
            "GET" => match &auth {
                Some(a) => agent.get(&url).header("Authorization", a).call(),
                None => agent.get(&url).call(),
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
        self.child.is_ready()
    }

    /// Polls `GET /readyz` until it answers 200. Panics (with the log's end) if the process exits
    /// first or the timeout passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.child
            .wait_ready(timeout)
            .unwrap_or_else(|e| panic!("{e}"));
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
        self.child
            .signal(signal)
            .unwrap_or_else(|e| panic!("signal {signal} to host {}: {e}", self.worker_id));
    }

    /// Waits for the process to exit. Panics (with the log's end) if it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
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
    /// Prints the end of the log of a failing test's hosts; the harness then kills the process.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.child.log_tail(60);
            let mut err = std::io::stderr().lock();
            writeln!(
                err,
                "--- last log lines of host {} ---\n{tail}",
                self.worker_id
            )
            .ok();
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

/// The resident set of process `pid` now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    support::memory::rss_mib(pid).unwrap_or_else(|e| panic!("VmRSS of {pid}: {e}"))
}

/// The peak resident set of process `pid` so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    support::memory::peak_rss_mib(pid).unwrap_or_else(|e| panic!("VmHWM of {pid}: {e}"))
}
