//! The host side of the `projector:plugin` world, generated from `wit/plugin.wit`: the export
//! the host calls (`projection`) and the imports every plugin may use (`types`, `log`,
//! `config`). The granted capabilities (`sql`, `search`) generate their own interfaces in their
//! modules, sharing these types.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
});
