//! The `log` capability: a plugin's records go to the host's structured log, tagged with the
//! projection, worker, claim batch and (when the plugin names one) event.

use super::bindings::projector::plugin::log::{Host, Level};
use super::PluginState;

macro_rules! emit {
    ($lvl:expr, $s:expr, $event_id:expr, $msg:expr) => {
        tracing::event!(
            target: "plugin",
            $lvl,
            projection = %$s.projection,
            worker_id = %$s.worker_id,
            claim_batch_id = %$s.claim_batch_id.map(|b| b.to_string()).unwrap_or_default(),
            event_id = $event_id.as_deref().unwrap_or(""),
            "{}",
            $msg
        )
    };
}

impl Host for PluginState {
    fn log(&mut self, level: Level, event_id: Option<String>, message: String) {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.log(level, event_id.as_deref(), &message);
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE, self, event_id, message),
            Level::Debug => emit!(tracing::Level::DEBUG, self, event_id, message),
            Level::Info => emit!(tracing::Level::INFO, self, event_id, message),
            Level::Warn => emit!(tracing::Level::WARN, self, event_id, message),
            Level::Error => emit!(tracing::Level::ERROR, self, event_id, message),
        }
    }
}
