//! `noop`: answers `success` for every event and touches nothing. It measures the host's own
//! cost (claim, call, ack) without any sink in the way.

use projector_plugin_sdk::{success, Event, Guest, Outcome, PluginInfo};

struct Noop;

impl Guest for Noop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "noop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events.iter().map(|_| success()).collect()
    }
}

projector_plugin_sdk::export!(Noop);
