//! A kept instance for batch work and benchmarks ([`Session`]); the syncer never uses it.

use serde_json::Value;
use wasmtime::Store;

use super::component::Plugin;
use super::dispatch::{Bound, Hook, wit_intent};
use super::error::{CallFailure, Error, Result};
use super::host::CallState;
use super::projection;
use super::types::{Called, Decision};
use crate::sync::intent::Intent;
use crate::sync::syncer::object_ref;

impl Plugin {
    /// One instance kept for many `preserve` calls, for batch work and benchmarks.
    ///
    /// ## Warning
    /// Calls on a session share the guest's memory and globals, so one call can see what an
    /// earlier one left behind. The syncer never uses it: a fresh store per call is what makes
    /// a plugin's verdict depend on its input alone. Each call still gets the full fuel budget
    /// and a fresh deadline; after a failed call the session refuses further calls.
    pub fn session(&self) -> Result<Session> {
        let code = self.code.current();
        let mut store = self.new_store(&code, "-");
        let fail = |store: &Store<CallState>, e| self.call_error(store, "instantiate", "-", e);
        if let Err(e) = self.arm(&mut store) {
            return Err(fail(&store, e));
        }
        match code.pre.instantiate(&mut store) {
            Ok(bound) => Ok(Session { plugin: self.clone(), store, bound, broken: false }),
            Err(e) => Err(fail(&store, e)),
        }
    }
}

/// A plugin instance and its store, reused across calls. Made by [`Plugin::session`].
pub struct Session {
    plugin: Plugin,
    store: Store<CallState>,
    bound: Bound,
    /// Set by a failed call: the instance may be left mid-way and must not be entered again.
    broken: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("plugin", &self.plugin).field("broken", &self.broken).finish_non_exhaustive()
    }
}

impl Session {
    /// Calls `preserve` on the kept instance, with a full fuel budget and a fresh deadline.
    pub fn preserve(&mut self, existing: &Value, desired: &Value, intent: &Intent) -> Result<Called<Decision>> {
        let object = object_ref(desired);
        let plugin = &self.plugin;
        if self.broken {
            return Err(Error::Call {
                plugin: plugin.info.name.clone(),
                hook: "preserve",
                object,
                kind: CallFailure::Trap,
                message: "the session is unusable after an earlier failed call".into(),
            });
        }
        if !plugin.info.hooks.preserve {
            return Ok(Called { value: Decision::Apply(desired.clone()), fuel: 0 });
        }
        self.store.data_mut().set_object(&object);
        let (existing_reads, reads) =
            (projection::effective(existing, &plugin.info.reads), projection::effective(desired, &plugin.info.reads));
        let (e, d) = (plugin.input(existing, &existing_reads), plugin.input(desired, &reads));
        let intent = wit_intent(intent, &reads);
        let hook = Hook::Preserve(&e, &d, &intent);
        let called = plugin.arm(&mut self.store).and_then(|()| hook.call(&mut self.store, &self.bound));
        let result = match called {
            Ok(value) => {
                let fuel = plugin.engine.config().fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
                plugin.decision(&object, desired, &reads, Called { value, fuel })
            }
            Err(e) => {
                self.broken = true;
                Err(plugin.call_error(&self.store, "preserve", &object, e))
            }
        };
        self.store.data().flush_output("preserve");
        result
    }
}
