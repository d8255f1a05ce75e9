//! `stamp-flaky`: a bad version (3.0.0) of the `stamp` projection, for the canary tests. It
//! answers `deterministic(flaky_version)` for about 30 % of events, writing nothing for them, and
//! stamps the others like `stamp` does. Which events fail is stable: those whose id's FNV-1a hash
//! (64-bit) is below 30 mod 100, so a test can tell them apart and a replay on another version
//! applies them once.

use projector_plugin_sdk::{deterministic, sql, success, Event, Guest, Outcome, PluginInfo};

struct StampFlaky;

const STAMP: &str = "INSERT INTO stamps (event_id, seq, version) VALUES ($1::uuid, $2, $3)";

/// Percent of events this version fails.
const FAILING_PERCENT: u64 = 30;

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Guest for StampFlaky {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "stamp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events
            .iter()
            .map(|e| {
                if fnv1a(&e.id) % 100 < FAILING_PERCENT {
                    return deterministic("flaky_version", "this version fails this event");
                }
                match sql::execute(STAMP, &(&e.id, e.seq, env!("CARGO_PKG_VERSION"))) {
                    Ok(_) => success(),
                    Err(err) => err.outcome(),
                }
            })
            .collect()
    }
}

projector_plugin_sdk::export!(StampFlaky);
