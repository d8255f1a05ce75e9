//! The `config` capability: read-only access to the projection's configuration map.

use super::bindings::projector::plugin::config::Host;
use super::PluginState;

impl Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
