//! Shared harness for the scenario tests: a throwaway Postgres with one fresh database per test,
//! the test plugins built once, a `projector run` child process to talk to over HTTP and to read
//! JSON logs from, and small helpers to insert events and wait for the outbox to settle.
//!
//! Postgres: if `PROJECTOR_TEST_PG_ADMIN_URL` is set (a superuser URL, as `scripts/test` exports),
//! every test creates its database on that server. Otherwise the first test of a test binary
//! starts a private cluster (initdb as the `postgres` user when running as root) and a detached
//! watchdog stops it and removes its directory once the test process is gone, even after a panic.

#![allow(dead_code)]

mod browser;
mod chronicle;
mod logs;
mod metrics;
mod order_log;
mod osmem;
mod otlp;
mod plugins;
mod postgres;
mod process;
mod proxy;
mod python;
mod rows;
mod sql_probe;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Each test file uses only some of the helpers.
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use chronicle::*;
#[allow(unused_imports)]
pub use logs::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use order_log::*;
#[allow(unused_imports)]
pub use osmem::*;
#[allow(unused_imports)]
pub use otlp::*;
#[allow(unused_imports)]
pub use plugins::*;
#[allow(unused_imports)]
pub use postgres::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use python::*;
#[allow(unused_imports)]
pub use rows::*;
#[allow(unused_imports)]
pub use sql_probe::*;

/// Settings that keep scenarios fast. `Host::start` applies them before the test's own env, so a
/// test overrides any of them by passing the same variable.
pub const FAST: &[(&str, &str)] = &[
    ("OUTBOX_BASE_BACKOFF_SECONDS", "0.05"),
    ("OUTBOX_MAX_BACKOFF_SECONDS", "0.5"),
    ("OUTBOX_POLL_INTERVAL_SECONDS", "0.2"),
    ("OUTBOX_LEASE_SECONDS", "2"),
    ("OUTBOX_RECLAIM_INTERVAL_SECONDS", "0.5"),
    ("OUTBOX_METRICS_REFRESH_SECONDS", "0.2"),
    ("OUTBOX_MAX_ATTEMPTS", "3"),
];

/// How long a scenario waits for something that should happen "soon" on a shared 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `Duration::from_secs`, shorter.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The repository root (the root package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Polls `check` every 100 ms until it returns true. Panics after `timeout`, naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `text` to a new file `name` in `dir` and returns its path.
pub fn write_file(dir: &Path, name: impl AsRef<OsStr>, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name.as_ref());
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The median of `values` (panics on an empty slice).
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}
