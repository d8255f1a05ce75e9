//! `hog`: allocates without bound in `handle`, to show that the host's memory cap stops it inside
//! the sandbox (`plugin_oom`) without disturbing other projections.

use projector_plugin_sdk::{Event, Guest, Outcome, PluginInfo};

struct Hog;

impl Guest for Hog {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hog".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so the memory is really used.
            hoard.push(vec![1u8; 1 << 20]);
            if hoard.len() == usize::MAX {
                return events
                    .iter()
                    .map(|_| projector_plugin_sdk::success())
                    .collect();
            }
        }
    }
}

projector_plugin_sdk::export!(Hog);
