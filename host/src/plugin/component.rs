//! A loaded plugin: its prepared instance and the hooks, each called in a fresh store (or, for
//! a plugin that declares itself stateless, in a kept instance reset between calls).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use wasmtime::Store;

use super::contract;
use super::describe::check_describe;
use super::dispatch::{Hook, Json, Raw, RawDecision, RulePre, wit_intent};
use super::engine::PluginEngine;
use super::error::{CallFailure, Error, Oversize, Result, Violation};
use super::host::CallState;
use super::output::{
    MAX_IGNORE_PATH_BYTES, MAX_IGNORE_PATHS, MAX_MESSAGE_BYTES, MAX_OUTPUT_BYTES, bounded, cause, classify,
};
use super::priority::{self, Runaways};
use super::projection;
use super::reuse::{Kept, KeptInstance, MAX_CALLS_PER_KEPT_INSTANCE};
use super::tiering::{Code, Compiled, Tier};
use super::types::{Called, Decision, Hooks, InstancePolicy, PluginInfo, STATELESS, WitVersion};
use crate::sync::intent::Intent;
use crate::sync::syncer::object_ref;

/// A compiled, checked plugin. Cheap to clone; calls never share state, unless
/// [`Plugin::with_instances`] made it reuse instances.
#[derive(Clone)]
pub struct Plugin {
    pub(super) engine: PluginEngine,
    pub(super) info: PluginInfo,
    digest: String,
    /// The compiled component; its baseline code is replaced by optimized code in place.
    pub(super) code: Arc<Code>,
    /// Idle instances, when the plugin runs with [`InstancePolicy::Reused`].
    kept: Option<Arc<Kept>>,
    /// Objects whose latest call ran to the deadline; their calls take turns, at the lowest
    /// CPU priority.
    runaways: Arc<Runaways>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).field("digest", &self.digest).finish()
    }
}

impl Plugin {
    /// Loads a plugin from a file: compiles it (or takes it from the engine's cache), checks
    /// that it implements the `rule` world, and calls `describe`. The file stem names it in
    /// errors until `describe` gives its name.
    pub fn load_file(engine: &PluginEngine, path: &Path) -> Result<Self> {
        let bytes = Self::read_file(engine, path)?;
        let label = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
        Self::load(engine, label, &bytes)
    }

    /// Reads a component file no larger than the plugin file limit (64 MiB), checked before
    /// reading.
    pub fn read_file(engine: &PluginEngine, path: &Path) -> Result<Vec<u8>> {
        super::files::read_component(path, engine.config().max_component_bytes)
    }

    /// Loads a plugin from its bytes; `label` names it in errors until `describe` gives its name.
    /// Once it passes its checks, Cranelift compiles it in the background (see `tiering`).
    pub fn load(engine: &PluginEngine, label: &str, bytes: &[u8]) -> Result<Self> {
        let plugin = Self::load_unaccepted(engine, label, bytes)?;
        plugin.accept();
        Ok(plugin)
    }

    /// [`Plugin::load`] without the background compile: the reloader starts it with
    /// [`Plugin::accept`] once the version passed its fixtures and joined the others.
    pub(super) fn load_unaccepted(engine: &PluginEngine, label: &str, bytes: &[u8]) -> Result<Self> {
        let (digest, code) = engine.prepare(label, bytes)?;
        Self::new(engine.clone(), label, digest, code)
    }

    /// Starts the background compile of Cranelift's code, if it is due (once per version).
    pub(super) fn accept(&self) {
        self.engine.optimize(&self.code);
    }

    fn new(engine: PluginEngine, label: &str, digest: String, code: Arc<Code>) -> Result<Self> {
        let wit = match code.current().pre {
            RulePre::V0_1(..) => WitVersion::V0_1,
            RulePre::V0_2(..) => WitVersion::V0_2,
        };
        let info = PluginInfo {
            name: label.to_string(),
            version: String::new(),
            kinds: vec![],
            scope: vec![],
            wit,
            hooks: Hooks::ALL,
            reads: vec![],
        };
        let mut plugin = Self { engine, info, digest, code, kept: None, runaways: Arc::default() };
        let Raw::Info(raw) = plugin.call(&Hook::Describe, "-")?.value else {
            return Err(plugin.mismatch("describe"));
        };
        plugin.info = check_describe(label, raw)?;
        contract::check_scope(&plugin.info)?;
        Ok(plugin)
    }

    /// What `describe` said.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// sha256 of the component's bytes, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The WIT package version it was built against.
    pub fn wit(&self) -> WitVersion {
        self.info.wit
    }

    /// Which compiler's code new calls run: baseline (Winch's) until Cranelift's is ready.
    pub fn tier(&self) -> Tier {
        self.code.current().tier
    }

    /// Waits up to `timeout` for Cranelift's code to be in use; whether it is. For tools and
    /// benchmarks that want the steady state; the syncer never waits.
    pub fn wait_optimized(&self, timeout: std::time::Duration) -> bool {
        self.code.wait_optimized(timeout)
    }

    /// This plugin with an instance policy. `Reused` is honoured only when the plugin declares
    /// itself stateless; otherwise the plugin keeps fresh instances, with a warning.
    #[must_use]
    pub fn with_instances(&self, policy: InstancePolicy) -> Self {
        let mut plugin = self.clone();
        plugin.kept = match policy {
            InstancePolicy::Fresh => None,
            InstancePolicy::Reused if self.info.declares_stateless() => {
                Some(self.kept.clone().unwrap_or_else(|| Arc::new(Kept::default())))
            }
            InstancePolicy::Reused => {
                tracing::warn!(
                    plugin = %self.info.name,
                    version = %self.info.version,
                    "reused instances refused: the plugin does not declare itself stateless \
                     (version build metadata '+{STATELESS}'); every call gets a fresh instance"
                );
                None
            }
        };
        plugin
    }

    /// This plugin in the instances it declares: reused ones (reset between calls) when it
    /// declares itself stateless, saving an interpreter's start-up on every call; a fresh one
    /// per call otherwise. What the syncer runs.
    #[must_use]
    pub fn with_declared_instances(&self) -> Self {
        let policy = if self.info.declares_stateless() { InstancePolicy::Reused } else { InstancePolicy::Fresh };
        self.with_instances(policy)
    }

    /// The instance policy in force (after the stateless check).
    pub fn instances(&self) -> InstancePolicy {
        if self.kept.is_some() { InstancePolicy::Reused } else { InstancePolicy::Fresh }
    }

    /// Runs one hook for `object`. The calls of objects whose latest call ran to the deadline
    /// run one at a time, each on a thread of its own at the lowest CPU priority
    /// ([`priority::on_runaway_thread`]).
    fn call(&self, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
        let called = if self.runaways.contains(object) {
            let _turn = self.runaways.turn();
            priority::on_runaway_thread(&self.info.name, || self.call_here(hook, object))
        } else {
            self.call_here(hook, object)
        };
        let overran = matches!(&called, Err(e) if e.failure() == Some(CallFailure::Deadline));
        self.runaways.record(object, overran);
        called
    }

    /// Runs one hook in a fresh store with the fuel budget, the deadline and the memory cap.
    /// The store is dropped afterwards, trapped or not, so nothing leaks into the next call.
    /// A plugin that reuses instances runs the hook in a kept one instead.
    fn call_here(&self, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
        if let Some(kept) = &self.kept {
            return self.call_kept(kept, hook, object);
        }
        let cfg = self.engine.config();
        let code = self.code.current();
        let mut store = self.new_store(&code, object);
        let outcome = self.arm(&mut store).and_then(|()| {
            let bound = code.pre.instantiate(&mut store)?;
            hook.call(&mut store, &bound)
        });
        let hook = hook.name();
        let called = match outcome {
            Ok(value) => {
                let fuel = cfg.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
                Ok(Called { value, fuel })
            }
            Err(e) => Err(self.call_error(&store, hook, object, e)),
        };
        // After the error is built: a trap's cause is read from what the guest wrote to stderr.
        store.data().flush_output(hook);
        called
    }

    /// Runs one hook in a kept instance (or a new one, kept afterwards), reset for the call:
    /// full fuel, a fresh deadline, the object's name, the memory-denied flag cleared. The
    /// instance goes back only after a call that succeeded, and at most
    /// [`MAX_CALLS_PER_KEPT_INSTANCE`] times.
    fn call_kept(&self, kept: &Kept, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
        let name = hook.name();
        let code = self.code.current();
        let mut instance = match kept.take(code.tier) {
            Some(instance) => instance,
            None => {
                let mut store = self.new_store(&code, object);
                match self.arm(&mut store).and_then(|()| code.pre.instantiate(&mut store)) {
                    Ok(bound) => KeptInstance { store, tier: code.tier, bound, calls: 0 },
                    Err(e) => {
                        let error = self.call_error(&store, name, object, e);
                        store.data().flush_output(name);
                        return Err(error);
                    }
                }
            }
        };
        let store = &mut instance.store;
        store.data_mut().set_object(object);
        store.data_mut().limits.memory_denied = false;
        let outcome = self.arm(store).and_then(|()| hook.call(store, &instance.bound));
        let called = match outcome {
            Ok(value) => {
                let fuel = self.engine.config().fuel.saturating_sub(store.get_fuel().unwrap_or(0));
                Ok(Called { value, fuel })
            }
            Err(e) => Err(self.call_error(store, name, object, e)),
        };
        store.data().flush_output(name);
        instance.calls += 1;
        // A guest that refused an object may have stopped half-way through its own state: start
        // the next call from a clean instance, as after a trap.
        let clean = matches!(&called, Ok(c) if !c.value.is_guest_error());
        if clean && instance.calls < MAX_CALLS_PER_KEPT_INSTANCE {
            kept.put(instance);
        }
        called
    }

    /// A store with this plugin's limits; fuel and deadline are set by [`Plugin::arm`].
    pub(super) fn new_store(&self, code: &Compiled, object: &str) -> Store<CallState> {
        let cfg = self.engine.config();
        let state = CallState::new(
            &self.info.name,
            object,
            cfg.memory_bytes,
            cfg.max_instances_per_call,
            self.engine.logs().clone(),
        );
        let mut store = Store::new(&code.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Gives `store` a full fuel budget and a fresh deadline, for one call.
    pub(super) fn arm(&self, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        store.set_fuel(self.engine.config().fuel)?;
        store.set_epoch_deadline(self.engine.deadline_ticks());
        Ok(())
    }

    /// A one-line error for a failed call: the failure class and the first line of its cause
    /// (a guest panic's message, the trap, the limit hit). The full error with the wasm
    /// backtrace goes to the debug log.
    pub(super) fn call_error(
        &self,
        store: &Store<CallState>,
        hook: &'static str,
        object: &str,
        e: wasmtime::Error,
    ) -> Error {
        let kind = classify(&e, store.data().limits.memory_denied);
        let plugin = self.info.name.as_str();
        tracing::debug!(plugin, object, hook, failure = %kind, error = ?e, "plugin call failed");
        Error::Call {
            plugin: plugin.to_string(),
            hook,
            object: object.to_string(),
            kind,
            message: cause(&e, &store.data().stderr.peek()),
        }
    }

    /// Calls `transform` on the desired object; `intent` is the upstream object's. A plugin
    /// that does not implement `transform` is not called: the object passes unchanged.
    pub fn transform(&self, desired: &Value, intent: &Intent) -> Result<Called<Value>> {
        if !self.info.hooks.transform {
            return Ok(Called { value: desired.clone(), fuel: 0 });
        }
        let object = object_ref(desired);
        let reads = projection::effective(desired, &self.info.reads);
        let input = self.input(desired, &reads);
        let intent = wit_intent(intent, &reads);
        let out = self.call(&Hook::Transform(&input, &intent), &object)?;
        let Raw::Text(text) = out.value else { return Err(self.mismatch("transform")) };
        let text = text.map_err(|message| self.rejected("transform", &object, &message))?;
        let value = self.parse_output("transform", &object, &text)?;
        let value = self.merged("transform", &object, desired, value, &reads)?;
        Ok(Called { value, fuel: out.fuel })
    }

    /// Calls `preserve` with the live downstream object and the desired one. A plugin that
    /// does not implement `preserve` is not called: the desired object is applied.
    pub fn preserve(&self, existing: &Value, desired: &Value, intent: &Intent) -> Result<Called<Decision>> {
        if !self.info.hooks.preserve {
            return Ok(Called { value: Decision::Apply(desired.clone()), fuel: 0 });
        }
        let object = object_ref(desired);
        let (existing_reads, reads) =
            (projection::effective(existing, &self.info.reads), projection::effective(desired, &self.info.reads));
        let (e, d) = (self.input(existing, &existing_reads), self.input(desired, &reads));
        let intent = wit_intent(intent, &reads);
        let out = self.call(&Hook::Preserve(&e, &d, &intent), &object)?;
        self.decision(&object, desired, &reads, out)
    }

    /// Instantiates the component in a fresh store, as every call does, and calls nothing:
    /// the fixed price of a call, for benchmarks.
    pub fn instantiate_only(&self) -> Result<()> {
        let code = self.code.current();
        let mut store = self.new_store(&code, "-");
        let outcome = self.arm(&mut store).and_then(|()| code.pre.instantiate(&mut store).map(drop));
        outcome.map_err(|e| self.call_error(&store, "instantiate", "-", e))
    }

    /// Whether hooks are sent the projection on the plugin's `reads` (it names some, and the
    /// engine projects: the `InputProjection` feature gate), rather than whole objects.
    fn projects(&self) -> bool {
        !self.info.reads.is_empty() && self.engine.config().project_inputs
    }

    /// The JSON text a hook is given: the projection on `reads`, or the whole object.
    pub(super) fn input(&self, obj: &Value, reads: &[String]) -> String {
        if self.projects() { projection::project_text(obj, reads) } else { obj.to_string() }
    }

    /// What a hook returned, merged into the full object when the plugin was sent a projection.
    fn merged(&self, hook: &'static str, object: &str, full: &Value, out: Value, reads: &[String]) -> Result<Value> {
        if !self.projects() {
            return Ok(out);
        }
        if !out.is_object() {
            return Err(self.contract_output(hook, object, "output is not a JSON object".into()));
        }
        let mut merged = full.clone();
        projection::merge(&mut merged, out, reads)
            .map_err(|e| self.contract_output(hook, object, format!("cannot merge the output: {e}")))?;
        Ok(merged)
    }

    /// Turns what `preserve` returned into a [`Decision`].
    pub(super) fn decision(
        &self,
        object: &str,
        desired: &Value,
        reads: &[String],
        out: Called<Raw>,
    ) -> Result<Called<Decision>> {
        let Raw::Decision(decision) = out.value else { return Err(self.mismatch("preserve")) };
        let decision = decision.map_err(|message| self.rejected("preserve", object, &message))?;
        let value = match decision {
            RawDecision::Apply(text) => {
                let value = self.parse_output("preserve", object, &text)?;
                Decision::Apply(self.merged("preserve", object, desired, value, reads)?)
            }
            RawDecision::Recreate(reason) => Decision::Recreate(bounded(&reason, MAX_MESSAGE_BYTES)),
            RawDecision::Skip(reason) => Decision::Skip(bounded(&reason, MAX_MESSAGE_BYTES)),
        };
        Ok(Called { value, fuel: out.fuel })
    }

    /// Calls `ignore-paths` for a group and kind; a plugin that does not implement it ignores
    /// nothing and is not called.
    pub fn ignore_paths(&self, group: &str, kind: &str) -> Result<Called<Vec<String>>> {
        if !self.info.hooks.ignore_paths {
            return Ok(Called { value: Vec::new(), fuel: 0 });
        }
        let object = format!("{kind}.{group}");
        let out = self.call(&Hook::IgnorePaths(group, kind), &object)?;
        let Raw::Paths(paths) = out.value else { return Err(self.mismatch("ignore-paths")) };
        let too_large = |what, size, limit| Error::TooLarge {
            plugin: self.info.name.clone(),
            hook: "ignore-paths",
            object: object.clone(),
            what,
            size,
            limit,
        };
        if paths.len() > MAX_IGNORE_PATHS {
            return Err(too_large(Oversize::List, paths.len(), MAX_IGNORE_PATHS));
        }
        if let Some(long) = paths.iter().find(|p| p.len() > MAX_IGNORE_PATH_BYTES) {
            return Err(too_large(Oversize::Path, long.len(), MAX_IGNORE_PATH_BYTES));
        }
        Ok(Called { value: paths, fuel: out.fuel })
    }

    /// A hook answered with another hook's type: cannot happen with generated bindings.
    fn mismatch(&self, hook: &'static str) -> Error {
        Error::Describe { plugin: self.info.name.clone(), message: format!("{hook} returned an unexpected value") }
    }

    fn contract_output(&self, hook: &'static str, object: &str, message: String) -> Error {
        Error::Contract {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            violation: Violation::Output,
            path: String::new(),
            message,
        }
    }

    /// The error for a plugin's own refusal, its message bounded and escaped.
    fn too_large(&self, hook: &'static str, object: &str, size: usize) -> Error {
        Error::TooLarge {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            what: Oversize::Object,
            size,
            limit: MAX_OUTPUT_BYTES,
        }
    }

    fn rejected(&self, hook: &'static str, object: &str, message: &str) -> Error {
        Error::Rejected {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            message: bounded(message, MAX_MESSAGE_BYTES),
        }
    }

    fn parse_output(&self, hook: &'static str, object: &str, json: &Json) -> Result<Value> {
        let text = match json {
            Json::Text(text) if text.len() <= MAX_OUTPUT_BYTES => text,
            Json::Text(text) => return Err(self.too_large(hook, object, text.len())),
            Json::TooLarge(size) => return Err(self.too_large(hook, object, *size)),
        };
        serde_json::from_str(text).map_err(|e| Error::Contract {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            violation: Violation::Output,
            path: String::new(),
            message: format!("output is not valid JSON: {e}"),
        })
    }
}
