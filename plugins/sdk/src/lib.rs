//! `projector-plugin-sdk`: what every projector plugin needs besides its own projection logic.
//!
//! - the contract's types ([`Event`], [`Outcome`], [`PluginInfo`], the [`Guest`] trait to
//!   implement) and its imports ([`log`], [`config`], [`sql`], [`search`]);
//! - [`export!`], which exports a [`Guest`] implementation as the component's `projection`;
//! - outcome constructors ([`success`], [`transient`], [`deterministic`]) and the reasons
//!   operators see ([`reason`], the table in docs/plugins.md);
//! - typed [`sql`] (parameters from `impl Serialize`, rows into `T: DeserializeOwned`) with the
//!   one mapping of database errors to outcomes, [`sql::apply_once`] (an effect applied at most
//!   once per event, through an applied-events table in the same transaction), and [`search`]
//!   with the one classification of bulk results.
//!
//! ```ignore
//! use projector_plugin_sdk::{reason, sql, deterministic, Event, Guest, Outcome, PluginInfo};
//!
//! struct Titles;
//!
//! impl Guest for Titles {
//!     fn describe() -> PluginInfo {
//!         PluginInfo { name: "titles".into(), version: env!("CARGO_PKG_VERSION").into(),
//!                      event_types: vec!["book.*".into()] }
//!     }
//!     fn handle(events: Vec<Event>) -> Vec<Outcome> {
//!         events.iter().map(|e| {
//!             if e.aggregate_id.is_empty() {
//!                 return deterministic(reason::BAD_PAYLOAD, "no aggregate id");
//!             }
//!             sql::execute("INSERT INTO titles (id) VALUES ($1) ON CONFLICT DO NOTHING",
//!                          &(&e.aggregate_id,))
//!                 .map_or_else(Outcome::from, |_| Outcome::Success)
//!         }).collect()
//!     }
//! }
//!
//! projector_plugin_sdk::export!(Titles);
//! ```
//!
//! The bindings are generated once, here, for a world that includes the contract's base world
//! `projector:plugin/plugin@0.1.0` and imports both capabilities. A component still imports only
//! the capabilities its code calls: `wit-component` drops the imports no code uses, so a plugin
//! that never calls [`sql`] builds to a component without the `sql` import and loads without
//! the `sql` grant.

#![deny(missing_docs)]

// The bindings below name this crate by its path (`::projector_plugin_sdk::...`) so that the
// export macro, which expands in the plugin's crate, finds them; this makes the same path work
// here.
extern crate self as projector_plugin_sdk;

/// The generated bindings of the contract. Use the re-exports at the crate root instead.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package projector:plugin-sdk;

            world guest {
                include projector:plugin/plugin@0.1.0;
                import projector:plugin/search@0.1.0;
                import projector:plugin/sql@0.1.0;
            }
        ",
        world: "guest",
        generate_all,
        // The export macro is used from the plugins' crates, not from this one.
        pub_export_macro: true,
        default_bindings_module: "::projector_plugin_sdk::bindings",
        runtime_path: "::projector_plugin_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

pub mod reason;
pub mod search;
pub mod sql;

pub use bindings::exports::projector::plugin::projection::Guest;
pub use bindings::projector::plugin::types::{Event, Failure, Outcome, PluginInfo};

/// Structured logging into the host's log (`log(level, event_id, message)`).
pub mod log {
    pub use crate::bindings::projector::plugin::log::{log, Level};
}

/// The projection's configuration (`[projection.config]`): `get(key)` and `entries()`.
pub mod config {
    pub use crate::bindings::projector::plugin::config::{entries, get};
}

/// Exports `$ty`, an implementation of [`Guest`], as the component's `projection`.
///
/// Write it once per plugin, at the crate root: `projector_plugin_sdk::export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

/// The event's effect is in the sink.
pub fn success() -> Outcome {
    Outcome::Success
}

/// The event may succeed later as it stands: the host retries it with backoff. `reason` is one
/// of [`reason`]'s constants or a token of the plugin's own (lowercase letters, digits, `_`).
pub fn transient(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Transient(failure(reason, message))
}

/// The event can never succeed as it stands: the host fails it at once.
pub fn deterministic(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Deterministic(failure(reason, message))
}

fn failure(reason: &str, message: impl Into<String>) -> Failure {
    Failure {
        reason: reason.to_owned(),
        message: message.into(),
    }
}
