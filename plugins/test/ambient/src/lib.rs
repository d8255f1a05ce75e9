//! `ambient`: answers `success` only if the sandbox gives it no ambient authority. For each event
//! it tries to read the environment and the arguments, list and read files, open TCP connections
//! and write to stdout/stderr; anything that works is reported as a deterministic
//! `ambient_authority` failure naming what was reachable. Clock and random are allowed and used.
//!
//! What it tries to reach beyond the fixed probes comes from its configuration, so a test can
//! aim it at what a leak would really reach: `connect` (comma-separated `host:port`s, e.g. the
//! test's Postgres and a listener the test opened) and `read` (comma-separated file paths).

use projector_plugin_sdk::config::get;
use projector_plugin_sdk::{deterministic, success, Event, Guest, Outcome, PluginInfo};
use std::io::Write;

struct Ambient;

fn findings() -> Vec<String> {
    let mut found = Vec::new();
    let listed = |key: &str| -> Vec<String> {
        get(key)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for address in listed("connect") {
        if std::net::TcpStream::connect(address.as_str()).is_ok() {
            found.push(format!("a TCP socket to {address}"));
        }
    }
    for path in listed("read") {
        if std::fs::read(&path).is_ok() {
            found.push(format!("file {path}"));
        }
    }
    if std::env::vars().next().is_some() {
        found.push("environment variables".to_owned());
    }
    if std::env::args().len() > 0 {
        found.push("arguments".to_owned());
    }
    for dir in ["/", ".", "/etc", "/tmp"] {
        if std::fs::read_dir(dir).is_ok() {
            found.push(format!("directory {dir}"));
        }
    }
    if std::fs::read("/etc/passwd").is_ok() {
        found.push("file /etc/passwd".to_owned());
    }
    if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
        found.push("a TCP socket".to_owned());
    }
    // stdout/stderr go nowhere: writing succeeds or fails, but nobody can read it; the host
    // test checks its own output for this marker.
    let _ = writeln!(std::io::stdout(), "AMBIENT-STDOUT-LEAK");
    let _ = writeln!(std::io::stderr(), "AMBIENT-STDERR-LEAK");
    // Allowed: clocks.
    let _ = std::time::SystemTime::now();
    found
}

impl Guest for Ambient {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "ambient".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let found = findings();
        events
            .iter()
            .map(|_| {
                if found.is_empty() {
                    success()
                } else {
                    deterministic("ambient_authority", found.join(", "))
                }
            })
            .collect()
    }
}

projector_plugin_sdk::export!(Ambient);
