//! Sandbox limits, declared in one place.
//!
//! - CPU: the engine runs with epoch interruption; one ticker thread advances the epoch every
//!   [`EPOCH_TICK`]. Each call gets a deadline in ticks, so a plugin spinning in a tight loop is
//!   interrupted (an async timeout around the call would not stop it).
//! - Memory: **one budget per plugin instance** (per store), per projection `memory_limit_mib`
//!   (default [`DEFAULT_MEMORY_BYTES`]). It covers the sum of every linear memory of every core
//!   instance of the component *and* every table, each table element charged
//!   [`TABLE_ELEMENT_BYTES`] (a table lives in host memory, outside the linear memories). Initial
//!   sizes are charged when the instance is made (a component whose initial memories and tables
//!   exceed the budget cannot be instantiated, so it is refused at load); growth beyond the
//!   budget fails inside the plugin (`memory.grow` / `table.grow` return -1), never in the host,
//!   and [`MemoryCap`] remembers it so the resulting trap is reported as `plugin_oom`. Memory is
//!   never given back to the budget: the store (the instance) is the unit that is dropped.
//! - Counts per store: at most [`MAX_INSTANCES`] core instances, [`MAX_MEMORIES`] linear
//!   memories and [`MAX_TABLES`] tables (a component beyond them is refused at load). The
//!   engine has multi-memory off ([`configure_engine`]): a core module declaring more than one
//!   memory is not a valid plugin. The numbers leave room for componentize-py's Python
//!   components (examples/python/chronicle_entries: 14 core instances, one memory of 12.4 MiB
//!   initially, two tables of 5,768 elements together).
//! - Output: a failure message is cut to [`FAILURE_MESSAGE_MAX_BYTES`] before anything else
//!   (settle, `outbox_events.error`, logs, spans) sees it, and a plugin log line to
//!   [`LOG_LINE_MAX_BYTES`]; both at a char boundary, with [`truncate`]'s marker
//!   `… [truncated, N bytes]` (N = the original size) appended.
//! - Logging rate: a plugin's log lines pass a token bucket per projection, shared by all its
//!   instances and versions in this host: [`LOG_LINES_PER_SECOND`] lines a second with bursts of
//!   [`LOG_BURST_LINES`]. Lines beyond it are dropped and counted
//!   (`projector_plugin_log_dropped_total`); the host says how many it dropped at most every
//!   [`LOG_DROP_REPORT_INTERVAL`] (see `log.rs`).
//! - Metric labels: at most [`MAX_REASON_LABELS`] distinct plugin-chosen failure reasons per
//!   projection become `reason` labels; further ones are counted under `other` (the stored
//!   `error_reason` keeps the real one). The host's own reasons are always labelled (see
//!   `metrics.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Deadline for instantiating a plugin and for its `describe()` call.
pub const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(10);

/// Memory budget per plugin instance (all linear memories and tables together), by default.
pub use projector_core::spec::DEFAULT_MEMORY_BYTES;

/// What one table element costs against the memory budget, bytes (wasmtime stores a pointer per
/// element; 16 is a conservative round figure).
pub const TABLE_ELEMENT_BYTES: usize = 16;

/// Core instances per plugin instance (store).
pub const MAX_INSTANCES: usize = 64;

/// Linear memories per plugin instance (store), over all its core instances.
pub const MAX_MEMORIES: usize = 16;

/// Tables per plugin instance (store), over all its core instances.
pub const MAX_TABLES: usize = 64;

/// Longest failure message kept (stored in `outbox_events.error`, logged), bytes before the
/// truncation marker.
pub const FAILURE_MESSAGE_MAX_BYTES: usize = 4096;

/// Longest plugin log line, bytes before the truncation marker.
pub const LOG_LINE_MAX_BYTES: usize = 4096;

/// Plugin log lines per second per projection (token bucket refill rate).
pub const LOG_LINES_PER_SECOND: f64 = 100.0;

/// Plugin log lines a projection may emit at once (token bucket size). 500 lets a plugin that logs
/// a line or two per event through a short burst of a few hundred events lose nothing (as
/// tests/leases.rs does), while a flood of 4 KiB lines still gets out only 2 MB at once.
pub const LOG_BURST_LINES: f64 = 500.0;

/// At most one "dropped N plugin log lines" record per projection this often.
pub const LOG_DROP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Distinct plugin-chosen `reason` labels per projection; more go to `other`.
pub const MAX_REASON_LABELS: usize = 32;

/// Turns on what the sandbox needs in `config` and off what it must not allow: epoch
/// interruption, the component model, and no multi-memory.
pub fn configure_engine(config: &mut wasmtime::Config) {
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.wasm_multi_memory(false);
}

/// `text` cut to at most `max` bytes at a char boundary, with `… [truncated, N bytes]` (N = the
/// original length) appended when anything was cut; unchanged when it fits.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let original = text.len();
    let cut = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text.truncate(cut);
    text.shrink_to_fit();
    text.push_str(&format!("… [truncated, {original} bytes]"));
    text
}

/// Ticks for a deadline `d` from now (at least one).
pub fn deadline_ticks(d: Duration) -> u64 {
    (d.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Starts the ticker thread.
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("projector-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A store's resource limits: one byte budget for all its memories and tables, and counts.
pub struct MemoryCap {
    budget: usize,
    /// Bytes charged so far: memories' sizes plus [`TABLE_ELEMENT_BYTES`] per table element.
    used: usize,
    /// Set when the plugin asked for more than its budget.
    pub denied: bool,
    /// What was refused last, for the failure message.
    refused: Option<String>,
}

impl MemoryCap {
    /// At most `bytes` for all memories and tables together, and [`MAX_INSTANCES`],
    /// [`MAX_MEMORIES`], [`MAX_TABLES`].
    pub fn new(bytes: usize) -> Self {
        MemoryCap {
            budget: bytes,
            used: 0,
            denied: false,
            refused: None,
        }
    }

    /// Bytes charged against the budget so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// What the budget refused last (`None` if nothing was).
    pub fn refusal(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Charges growth from `current` to `desired` bytes (a `maximum` the object cannot exceed
    /// makes wasmtime refuse the growth itself, so nothing is charged for it).
    fn charge(
        &mut self,
        what: &str,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> bool {
        if desired <= current || maximum.is_some_and(|m| desired > m) {
            return true;
        }
        match self.used.checked_add(desired - current) {
            Some(total) if total <= self.budget => {
                self.used = total;
                true
            }
            _ => {
                self.denied = true;
                self.refused = Some(format!(
                    "{what} growth by {} bytes refused ({} of {} bytes in use by all memories and tables)",
                    desired - current,
                    self.used,
                    self.budget
                ));
                false
            }
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.charge("memory", current, desired, maximum))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |n: usize| n.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.charge("table", bytes(current), bytes(desired), maximum.map(bytes)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Module, Store};

    #[test]
    fn truncate_cuts_at_a_char_boundary_and_says_how_long_it_was() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("ééééé".into(), 5);
        assert_eq!(cut, "éé… [truncated, 10 bytes]");
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        configure_engine(&mut config);
        Engine::new(&config).unwrap()
    }

    fn store(engine: &Engine, budget: usize) -> Store<MemoryCap> {
        let mut store = Store::new(engine, MemoryCap::new(budget));
        store.limiter(|s| s);
        // No ticker here: the epoch never advances.
        store.set_epoch_deadline(1);
        store
    }

    fn module(engine: &Engine, wat: &str) -> Module {
        Module::new(engine, wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn the_budget_covers_the_memories_of_every_instance_in_a_store() {
        let engine = engine();
        // 40 MiB each: one fits a 64 MiB budget, two do not.
        let m = module(&engine, "(module (memory 640))");
        let mut store = store(&engine, 64 << 20);
        wasmtime::Instance::new(&mut store, &m, &[]).unwrap();
        let err = wasmtime::Instance::new(&mut store, &m, &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("exceeds memory limits"),
            "{err:#}"
        );
        assert!(store.data().denied);
    }

    #[test]
    fn table_elements_are_charged_against_the_same_budget() {
        let engine = engine();
        let m = module(
            &engine,
            r#"(module (memory 640) (table $t 1 funcref)
                 (func (export "grow") (param i32) (result i32)
                   (table.grow $t (ref.null func) (local.get 0))))"#,
        );
        let mut store = store(&engine, 64 << 20);
        let instance = wasmtime::Instance::new(&mut store, &m, &[]).unwrap();
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .unwrap();
        // 1M elements = 16 MiB: fits beside 40 MiB of memory; another 1M does not.
        assert_eq!(grow.call(&mut store, 1 << 20).unwrap(), 1);
        assert!(!store.data().denied);
        assert_eq!(grow.call(&mut store, 1 << 20).unwrap(), -1);
        assert!(store.data().denied);
        assert!(store.data().refusal().unwrap().contains("table"));
    }

    #[test]
    fn instances_beyond_the_limit_and_several_memories_are_refused() {
        let engine = engine();
        let m = module(&engine, "(module)");
        let mut store = store(&engine, 64 << 20);
        for _ in 0..MAX_INSTANCES {
            wasmtime::Instance::new(&mut store, &m, &[]).unwrap();
        }
        let err = wasmtime::Instance::new(&mut store, &m, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("instance count"), "{err:#}");
        let two = wat::parse_str("(module (memory 1) (memory 1))").unwrap();
        assert!(Module::new(&engine, two).is_err(), "multi-memory is off");
    }
}
