//! `scripted`: a test plugin whose answer for each event is written in the event's payload, so
//! host tests can drive every outcome through a real component.
//!
//! Payload keys (all optional except `outcome`):
//! - `outcome`: `success` | `transient` | `deterministic` | `trap` (panics) |
//!   `from_config` (the projection's config key `outcome` says which, default `deterministic`
//!   with reason `bad_config`: an operator "fixes" it by changing the config) |
//!   `transient_then_success` (transient while `attempt <= fail_times`, then success) |
//!   `wrong_count` (returns one outcome too many for the whole batch) | `spin` (loops forever).
//! - `reason`, `message`: the failure's reason and message (defaults `es_connect` for transient,
//!   `bad_payload` for deterministic).
//! - `fail_times`: for `transient_then_success`, how many attempts fail first (default 1).
//! - `sleep_ms`: sleep this long before answering (slow sinks, crash-mid-batch tests).
//! - `log`: when true, logs `begin <id> <unix_micros>` and `end <id> <unix_micros>` at `info`
//!   around the event, so tests can see when each event was being processed.
//!
//! A payload that is not a JSON object with a known `outcome` is a deterministic `bad_payload`.

use projector_plugin_sdk::log::{log, Level};
use projector_plugin_sdk::{config, deterministic, reason, transient};
use projector_plugin_sdk::{Event, Guest, Outcome, PluginInfo};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Scripted;

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// The scripted failure's reason and message, `default_reason` when the script names none.
fn failure(script: &Value, default_reason: &'static str) -> (String, String) {
    let text = |key: &str| script.get(key).and_then(Value::as_str).map(str::to_owned);
    (
        text("reason").unwrap_or_else(|| default_reason.to_owned()),
        text("message").unwrap_or_else(|| format!("scripted {default_reason}")),
    )
}

fn scripted_transient(script: &Value) -> Outcome {
    let (reason, message) = failure(script, reason::ES_CONNECT);
    transient(&reason, message)
}

fn scripted_deterministic(script: &Value) -> Outcome {
    let (reason, message) = failure(script, reason::BAD_PAYLOAD);
    deterministic(&reason, message)
}

/// The outcome for one event; `None` means "return the wrong number of outcomes".
fn run(event: &Event) -> Option<Outcome> {
    let script: Value = match serde_json::from_str(&event.payload) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Some(deterministic(
                reason::BAD_PAYLOAD,
                format!("payload of {} is not a JSON object", event.id),
            ))
        }
    };
    let logged = script.get("log").and_then(Value::as_bool).unwrap_or(false);
    if logged {
        log(
            Level::Info,
            Some(&event.id),
            &format!("begin {} {}", event.id, now_micros()),
        );
    }
    if let Some(ms) = script.get("sleep_ms").and_then(Value::as_u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let configured = config::get("outcome");
    let chosen = match script.get("outcome").and_then(Value::as_str).unwrap_or("") {
        "from_config" => configured.as_deref().unwrap_or("config_missing"),
        other => other,
    };
    let outcome = match chosen {
        "config_missing" => Some(deterministic(
            reason::BAD_CONFIG,
            "the projection's config has no `outcome`",
        )),
        "success" => Some(Outcome::Success),
        "transient" => Some(scripted_transient(&script)),
        "deterministic" => Some(scripted_deterministic(&script)),
        "transient_then_success" => {
            let fail_times = script
                .get("fail_times")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if u64::from(event.attempt) > fail_times {
                Some(Outcome::Success)
            } else {
                Some(scripted_transient(&script))
            }
        }
        "trap" => panic!("scripted trap for event {}", event.id),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "wrong_count" => None,
        other => Some(deterministic(
            reason::BAD_PAYLOAD,
            format!("unknown scripted outcome {other:?}"),
        )),
    };
    if logged {
        log(
            Level::Info,
            Some(&event.id),
            &format!("end {} {}", event.id, now_micros()),
        );
    }
    outcome
}

impl Guest for Scripted {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "scripted".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len() + 1);
        let mut wrong_count = false;
        for event in &events {
            match run(event) {
                Some(outcome) => outcomes.push(outcome),
                None => {
                    wrong_count = true;
                    outcomes.push(Outcome::Success);
                }
            }
        }
        if wrong_count {
            outcomes.push(Outcome::Success);
        }
        outcomes
    }
}

projector_plugin_sdk::export!(Scripted);
