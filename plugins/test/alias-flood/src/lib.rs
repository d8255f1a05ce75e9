//! `alias-flood`: a hostile test plugin. For each batch it answers with `count` outcomes (config
//! key, default 64) per event, whose failure messages all point at the *same* buffer of `mib`
//! MiB (config key, default 8) in its linear memory. The guest holds the buffer once; a host
//! that copied every message out would hold it `count` times per event (64 × 8 MiB = 512 MiB by
//! default). The answer also has the wrong number of outcomes, which the host must notice without
//! having copied them all.
//!
//! The aliasing is made with `unsafe` on purpose: safe code cannot produce it, a hand-written
//! component can. The buffer is leaked, so the plugin never frees it twice.

use projector_plugin_sdk::config::get;
use projector_plugin_sdk::{Event, Failure, Guest, Outcome, PluginInfo};

struct AliasFlood;

fn setting(key: &str, default: usize) -> usize {
    get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Guest for AliasFlood {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "alias-flood".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["*".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        let count = setting("count", 64) * events.len().max(1);
        let bytes = setting("mib", 8) << 20;
        let buffer: &'static mut str = Box::leak("x".repeat(bytes).into_boxed_str());
        let (ptr, len) = (buffer.as_mut_ptr(), buffer.len());
        (0..count)
            .map(|_| {
                // SAFETY: deliberately not: every message aliases the leaked buffer. The
                // generated post-return code frees each string; the allocator then sees the same
                // pointer many times, which is exactly the hostile shape under test.
                let message = unsafe { String::from_raw_parts(ptr, len, len) };
                Outcome::Deterministic(Failure {
                    reason: "alias_flood".into(),
                    message,
                })
            })
            .collect()
    }
}

projector_plugin_sdk::export!(AliasFlood);
