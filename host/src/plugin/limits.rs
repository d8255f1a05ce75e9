//! Sandbox limits, declared in one place.
//!
//! - CPU: the engine runs with epoch interruption; one ticker thread advances the epoch every
//!   [`EPOCH_TICK`]. Each call gets a deadline in ticks, so a plugin spinning in a tight loop is
//!   interrupted (an async timeout around the call would not stop it).
//! - Memory: each store is capped (per projection, `memory_limit_mib`, default
//!   [`DEFAULT_MEMORY_BYTES`]); growth beyond fails inside the plugin (`memory.grow` returns -1),
//!   never in the host, and [`MemoryCap`] remembers it so the resulting trap is reported as
//!   `plugin_oom`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Deadline for instantiating a plugin and for its `describe()` call.
pub const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(10);

/// Linear-memory cap per plugin instance.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;

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

/// A store's resource limits, remembering whether a memory growth was refused.
pub struct MemoryCap {
    limits: StoreLimits,
    /// Set when the plugin asked for more memory than its cap.
    pub denied: bool,
}

impl MemoryCap {
    /// At most `bytes` of linear memory per memory, and a few instances.
    pub fn new(bytes: usize) -> Self {
        MemoryCap {
            limits: StoreLimitsBuilder::new()
                .memory_size(bytes)
                .instances(16)
                .build(),
            denied: false,
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
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
