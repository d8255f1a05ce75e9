//! `flood`: a hostile test plugin that tries to flood the host's output through the channels a
//! plugin legitimately has: failure messages, failure reasons and log lines. Each event's payload
//! says what to do (all keys optional):
//! - `log_lines`, `log_bytes`: log this many lines (at `info`) of this many bytes each (default
//!   0 lines of 100 bytes). Each line starts with `flood <event id> <n> ` and is padded with `é`
//!   (two bytes, so a cut at a byte limit must respect char boundaries).
//! - `outcome`: `success` (default), `transient` or `deterministic`.
//! - `reason`: the failure's reason (default `flood`).
//! - `message_bytes`: the failure message's size in bytes (default 5), padded like log lines.

use projector_plugin_sdk::log::{log, Level};
use projector_plugin_sdk::{deterministic, success, transient, Event, Guest, Outcome, PluginInfo};
use serde_json::Value;

struct Flood;

/// `prefix` padded with `é` (and one `x` when the parity needs it) to exactly `bytes` bytes
/// (or `prefix` alone when it is longer).
fn padded(prefix: &str, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes.max(prefix.len()));
    text.push_str(prefix);
    if (bytes.saturating_sub(text.len())) % 2 == 1 {
        text.push('x');
    }
    while text.len() + 2 <= bytes {
        text.push('é');
    }
    text
}

fn run(event: &Event) -> Outcome {
    let script: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    let number =
        |key: &str, default: u64| script.get(key).and_then(Value::as_u64).unwrap_or(default);
    let lines = number("log_lines", 0);
    let line_bytes = number("log_bytes", 100) as usize;
    for n in 0..lines {
        log(
            Level::Info,
            Some(&event.id),
            &padded(&format!("flood {} {n} ", event.id), line_bytes),
        );
    }
    let reason = script
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("flood");
    let message = || padded("flood ", number("message_bytes", 5) as usize);
    match script
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("success")
    {
        "transient" => transient(reason, message()),
        "deterministic" => deterministic(reason, message()),
        _ => success(),
    }
}

impl Guest for Flood {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "flood".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events.iter().map(run).collect()
    }
}

projector_plugin_sdk::export!(Flood);
