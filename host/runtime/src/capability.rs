//! What every capability a plugin may import has in common.
//!
//! A capability is one WIT interface the host implements (`log`, `config`, `search`, `sql`),
//! in a module of its own that knows nothing of the others or of the store they live in:
//!
//! - its per-instance context, and a *view* of it ([`Capability::Data`]): the context plus the
//!   [`BatchScope`] of the batch being handled, which is what the interface's `Host` trait is
//!   implemented for;
//! - [`Capability::add_to_linker`], generic over the store's data, given a function that
//!   projects the store's data onto that view (the pattern of wasmtime-wasi's crates);
//! - whether a projection's grants allow importing it ([`Capability::granted`]), checked on the
//!   component's imports at load;
//! - a backend trait where the capability reaches outside the sandbox (the log, Postgres, the
//!   search cluster): the host's implementation in `projector run`, in-memory ones in the
//!   authoring test kit. Validation and limits sit in the capability, in front of any backend.
//!
//! Invariant: a capability's `Host` implementation sees only its own context and the batch
//! scope; nothing it does can reach another capability's state.

use projector_core::spec::Grants;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;
use wasmtime::component::Linker;

/// The batch a capability call happens in: who is calling and by when it must be done. Set by
/// the handler before each call; the same for every capability of an instance.
#[derive(Debug, Clone)]
pub struct BatchScope {
    /// The projection.
    pub projection: Arc<str>,
    /// This host's worker id.
    pub worker_id: Arc<str>,
    /// The batch being handled; `None` outside `handle()` (instantiation, `describe()`).
    pub claim_batch_id: Option<Uuid>,
    /// When the batch must be done; `None` outside `handle()`. Bounds what a call may wait for.
    pub deadline: Option<Instant>,
}

/// One WIT interface the host implements for plugins.
pub trait Capability {
    /// The capability's name in grants and errors (`sql`).
    const NAME: &'static str;
    /// The prefix of the interface's import name (`projector:plugin/sql@`).
    const INTERFACE: &'static str;
    /// What the interface's `Host` trait is implemented for, borrowed from the store's data.
    type Data<'a>;
    /// Whether a projection with `grants` may import the interface.
    fn granted(grants: &Grants) -> bool;
    /// Adds the interface to `linker`; `get` projects the store's data onto the view.
    fn add_to_linker<T: 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> Self::Data<'_>,
    ) -> wasmtime::Result<()>;
}
