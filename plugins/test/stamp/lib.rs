//! `stamp`: a simple sql projection built twice (`stamp-v1`, `stamp-v2`) to show plugin version
//! swaps. It records, for every event, which plugin version applied it:
//! `INSERT INTO stamps (event_id, seq, version) ...` (a second delivery of an event fails on the
//! primary key, so "applied exactly once" is checked by the database itself). A failed insert is
//! answered as the SDK maps database errors.

use projector_plugin_sdk::{sql, success, Event, Guest, Outcome, PluginInfo};

struct Stamp;

const STAMP: &str = "INSERT INTO stamps (event_id, seq, version) VALUES ($1::uuid, $2, $3)";

impl Guest for Stamp {
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
            .map(
                |e| match sql::execute(STAMP, &(&e.id, e.seq, env!("CARGO_PKG_VERSION"))) {
                    Ok(_) => success(),
                    Err(err) => err.outcome(),
                },
            )
            .collect()
    }
}

projector_plugin_sdk::export!(Stamp);
