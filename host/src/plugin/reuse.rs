//! Instance reuse: the idle instances a plugin that declares itself stateless keeps between
//! calls, each with its store, and how many it keeps.

use std::sync::{Mutex, PoisonError};

use wasmtime::Store;

use super::dispatch::Bound;
use super::host::CallState;
use super::tiering::Tier;

/// Calls one kept instance serves before it is replaced: bounds what a slow leak in a guest
/// (an interpreter's heap, a growing cache) can accumulate.
pub(super) const MAX_CALLS_PER_KEPT_INSTANCE: u32 = 1_000;

/// Idle kept instances per plugin. Each holds a slot of the engine's instance pool (and an
/// interpreter's 17 core instances), so only as many as calls usually run at once are kept.
const MAX_IDLE_KEPT_INSTANCES: usize = 4;

/// The idle instances of a plugin that reuses them. Shared by the plugin's clones.
#[derive(Default)]
pub(super) struct Kept {
    idle: Mutex<Vec<KeptInstance>>,
}

/// An instance kept between calls, with its store.
pub(super) struct KeptInstance {
    pub(super) store: Store<CallState>,
    /// The code it was made from: once optimized code is in use, baseline instances go.
    pub(super) tier: Tier,
    pub(super) bound: Bound,
    /// Calls served so far.
    pub(super) calls: u32,
}

impl Kept {
    pub(super) fn take(&self, tier: Tier) -> Option<KeptInstance> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|i| i.tier == tier);
        idle.pop()
    }

    pub(super) fn put(&self, instance: KeptInstance) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_KEPT_INSTANCES {
            idle.push(instance);
        }
    }
}
