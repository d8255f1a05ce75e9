//! The `config` capability: read-only access to the projection's configuration map. Always
//! granted; the map is the projection's `[projection.config]`, shared by its instances.

use crate::bindings::projector::plugin::config::{self as wit, Host};
use crate::capability::Capability;
use projector_core::spec::Grants;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// The `config` capability.
pub struct Config;

/// An instance's `config` context: the projection's map.
pub struct ConfigCtx {
    map: Arc<BTreeMap<String, String>>,
}

impl ConfigCtx {
    /// The context answering from `map`.
    pub fn new(map: Arc<BTreeMap<String, String>>) -> Self {
        ConfigCtx { map }
    }
}

impl HasData for Config {
    type Data<'a> = &'a mut ConfigCtx;
}

impl Capability for Config {
    const NAME: &'static str = "config";
    const INTERFACE: &'static str = "projector:plugin/config@";
    type Data<'a> = &'a mut ConfigCtx;

    fn granted(_: &Grants) -> bool {
        true
    }

    fn add_to_linker<T: 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut ConfigCtx,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, Config>(linker, get)
    }
}

impl Host for ConfigCtx {
    fn get(&mut self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
