//! `runaway`: never returns from `handle` (a tight loop with no host calls), to show that the
//! host's epoch deadline interrupts it (`plugin_timeout`) without disturbing other projections.

use projector_plugin_sdk::{Event, Guest, Outcome, PluginInfo};

struct Runaway;

impl Guest for Runaway {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "runaway".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(_events: Vec<Event>) -> Vec<Outcome> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

projector_plugin_sdk::export!(Runaway);
