//! Sandbox limits, declared in one place.
//!
//! - CPU: the engine runs with epoch interruption; one ticker thread advances the epoch every
//!   [`EPOCH_TICK`]. Each call gets a deadline in ticks, so a plugin spinning in a tight loop is
//!   interrupted (an async timeout around the call would not stop it).
//! - Memory: each store is capped at [`DEFAULT_MEMORY_BYTES`]; growth beyond fails inside the
//!   plugin, never in the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;

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
