//! `stamp`: a simple sql projection built twice (`stamp-v1`, `stamp-v2`) to show plugin version
//! swaps. It records, for every event, which plugin version applied it:
//! `INSERT INTO stamps (event_id, seq, version) ...` (a second delivery of an event fails on the
//! primary key, so "applied exactly once" is checked by the database itself).

wit_bindgen::generate!({
    path: "../../wit",
    world: "sql-plugin",
});

use exports::projector::plugin::projection::{Event, Guest, Outcome, PluginInfo};
use projector::plugin::sql::execute;
use projector::plugin::types::Failure;

struct Stamp;

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
            .map(|e| {
                let params = format!(
                    "[\"{}\", {}, \"{}\"]",
                    e.id,
                    e.seq,
                    env!("CARGO_PKG_VERSION")
                );
                match execute(
                    "INSERT INTO stamps (event_id, seq, version) VALUES ($1::uuid, $2, $3)",
                    &params,
                ) {
                    Ok(_) => Outcome::Success,
                    Err(err) => Outcome::Deterministic(Failure {
                        reason: "stamp_failed".into(),
                        message: err.message,
                    }),
                }
            })
            .collect()
    }
}

export!(Stamp);
