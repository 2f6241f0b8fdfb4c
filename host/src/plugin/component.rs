//! A loaded plugin: its prepared instance and the hooks, each called in a fresh store (or, for
//! batch work such as benchmarks, in one kept [`Session`]; or, for a plugin that declares itself
//! stateless and is configured `instances: reused`, in a kept instance reset between calls).

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use wasmtime::Store;

use super::bindings::v0_1::downsync::rules::types as wit01;
use super::bindings::v0_2::downsync::rules::types as wit;
use super::bindings::{v0_1, v0_2};
use super::contract;
use super::engine::PluginEngine;
use super::error::{CallFailure, Error, Oversize, Result, Violation};
use super::host::{CallState, escape};
use super::overrun::Overruns;
use super::projection;
use super::tiering::{Code, Compiled, Tier};
use crate::sync::intent::Intent;

/// A group/kind pattern; `*` matches anything, the core group is "".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KindPattern {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl KindPattern {
    /// Whether the pattern matches a group and kind.
    pub fn matches(&self, group: &str, kind: &str) -> bool {
        (self.group == "*" || self.group == group) && (self.kind == "*" || self.kind == kind)
    }
}

/// The version of the `downsync:rules` WIT package a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WitVersion {
    /// `downsync:rules@0.1.0`: every hook, the whole object, no intent.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `downsync:rules@0.2.0`: declared hooks and reads, intent.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        })
    }
}

/// The hooks a plugin implements; the others are never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// `transform`.
    pub transform: bool,
    /// `preserve`.
    pub preserve: bool,
    /// `ignore-paths`.
    pub ignore_paths: bool,
}

impl Hooks {
    /// Every hook (what a 0.1.0 plugin gets).
    pub const ALL: Self = Self { transform: true, preserve: true, ignore_paths: true };
}

/// What a plugin's `describe` said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// Unique name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kinds handled.
    pub kinds: Vec<KindPattern>,
    /// JSON pointer patterns it may write.
    pub scope: Vec<String>,
    /// The WIT package version it was built against.
    pub wit: WitVersion,
    /// The hooks it implements.
    pub hooks: Hooks,
    /// JSON pointers of what it reads; empty means the whole object.
    pub reads: Vec<String>,
}

impl PluginInfo {
    /// Whether the plugin handles this group and kind.
    pub fn handles(&self, group: &str, kind: &str) -> bool {
        self.kinds.iter().any(|k| k.matches(group, kind))
    }

    /// Whether the plugin declares itself stateless: its version carries the semver build
    /// metadata identifier `stateless` (`0.2.0+stateless`, `1.0.0+build.7.stateless`). The WIT
    /// has no field for it, and build metadata does not change what a version means, so every
    /// plugin built against 0.1.0 or 0.2.0 can say it without a new WIT package.
    pub fn declares_stateless(&self) -> bool {
        self.version.split_once('+').is_some_and(|(_, build)| build.split('.').any(|id| id == STATELESS))
    }
}

/// The build metadata identifier by which a plugin declares itself stateless.
pub const STATELESS: &str = "stateless";

/// How a plugin's calls get their instance (the `instances` plugin setting).
///
/// ## Warning
/// `Reused` trades isolation for speed: guest memory and globals survive from one object to
/// the next, so a plugin that keeps anything between calls (a cache, a counter, a mutated
/// default) makes an object's verdict depend on the objects before it. It is honoured only for
/// plugins that declare themselves stateless ([`PluginInfo::declares_stateless`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum InstancePolicy {
    /// A fresh instance for every call, dropped afterwards (the default): nothing a call leaves
    /// behind can reach the next one.
    #[default]
    Fresh,
    /// Instances kept between calls and reset: each call gets a full fuel budget, a fresh
    /// deadline, empty output captures and the memory-denied flag cleared. Guest memory and
    /// globals are *not* reset. An instance is dropped, and the next call instantiates anew,
    /// after any failed call (a trap, fuel, the deadline, memory, the guest's own error) and
    /// after [`MAX_CALLS_PER_KEPT_INSTANCE`] calls.
    Reused,
}

impl std::fmt::Display for InstancePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fresh => "fresh",
            Self::Reused => "reused",
        })
    }
}

/// Calls one kept instance serves before it is replaced: bounds what a slow leak in a guest
/// (an interpreter's heap, a growing cache) can accumulate.
pub const MAX_CALLS_PER_KEPT_INSTANCE: u32 = 1_000;

/// Idle kept instances per plugin. Each holds a slot of the engine's instance pool (and an
/// interpreter's 17 core instances), so only as many as calls usually run at once are kept.
const MAX_IDLE_KEPT_INSTANCES: usize = 4;

/// The verdict of `preserve`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this object.
    Apply(Value),
    /// Delete and recreate, for this reason.
    Recreate(String),
    /// Leave the object alone, for this reason.
    Skip(String),
}

/// The outcome of one call, with the fuel it burnt (for metrics and benchmarks).
#[derive(Debug, Clone)]
pub struct Called<T> {
    /// What the hook returned.
    pub value: T,
    /// Fuel consumed.
    pub fuel: u64,
}

/// A component linked against one of the WIT package versions, ready to instantiate.
#[derive(Clone)]
pub(crate) enum RulePre {
    /// `downsync:rules@0.1.0`.
    V0_1(v0_1::RulePre<CallState>),
    /// `downsync:rules@0.2.0`.
    V0_2(v0_2::RulePre<CallState>),
}

/// One instance of a component.
enum Bound {
    V0_1(v0_1::Rule),
    V0_2(v0_2::Rule),
}

impl RulePre {
    fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Self::V0_1(pre) => Bound::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Bound::V0_2(pre.instantiate(store)?),
        })
    }
}

/// What a hook returned, whichever the WIT version.
enum Raw {
    Info(RawInfo),
    Text(Result<String, String>),
    Decision(Result<wit::Decision, String>),
    Paths(Vec<String>),
}

impl Raw {
    /// Whether the guest returned its own error (the `result`'s `err`).
    fn is_guest_error(&self) -> bool {
        matches!(self, Raw::Text(Err(_)) | Raw::Decision(Err(_)))
    }
}

/// A hook to call and its inputs (JSON text, already projected).
enum Hook<'a> {
    Describe,
    Transform(&'a String, &'a wit::Intent),
    Preserve(&'a String, &'a String, &'a wit::Intent),
    IgnorePaths(&'a str, &'a str),
}

impl Hook<'_> {
    fn call(&self, store: &mut Store<CallState>, bound: &Bound) -> wasmtime::Result<Raw> {
        Ok(match bound {
            Bound::V0_2(rule) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_2(r.call_describe(store)?)),
                    Hook::Transform(d, intent) => Raw::Text(r.call_transform(store, d, intent)?),
                    Hook::Preserve(e, d, intent) => Raw::Decision(r.call_preserve(store, e, d, intent)?),
                    Hook::IgnorePaths(g, k) => Raw::Paths(r.call_ignore_paths(store, g, k)?),
                }
            }
            Bound::V0_1(rule) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_1(r.call_describe(store)?)),
                    Hook::Transform(d, _) => Raw::Text(r.call_transform(store, d)?),
                    Hook::Preserve(e, d, _) => Raw::Decision(r.call_preserve(store, e, d)?.map(|d| match d {
                        wit01::Decision::Apply(t) => wit::Decision::Apply(t),
                        wit01::Decision::Recreate(t) => wit::Decision::Recreate(t),
                        wit01::Decision::Skip(t) => wit::Decision::Skip(t),
                    })),
                    Hook::IgnorePaths(g, k) => Raw::Paths(r.call_ignore_paths(store, g, k)?),
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Hook::Describe => "describe",
            Hook::Transform(..) => "transform",
            Hook::Preserve(..) => "preserve",
            Hook::IgnorePaths(..) => "ignore-paths",
        }
    }
}

/// `describe`'s answer before it is checked.
struct RawInfo {
    name: String,
    version: String,
    kinds: Vec<(String, String)>,
    scope: Vec<String>,
    wit: WitVersion,
    hooks: Hooks,
    reads: Vec<String>,
}

impl RawInfo {
    fn from_v0_1(i: wit01::PluginInfo) -> Self {
        Self {
            name: i.name,
            version: i.version,
            kinds: i.kinds.into_iter().map(|k| (k.group, k.kind)).collect(),
            scope: i.scope,
            wit: WitVersion::V0_1,
            hooks: Hooks::ALL,
            reads: Vec::new(),
        }
    }

    fn from_v0_2(i: wit::PluginInfo) -> Self {
        Self {
            name: i.name,
            version: i.version,
            kinds: i.kinds.into_iter().map(|k| (k.group, k.kind)).collect(),
            scope: i.scope,
            wit: WitVersion::V0_2,
            hooks: Hooks {
                transform: i.hooks.contains(wit::Hooks::TRANSFORM),
                preserve: i.hooks.contains(wit::Hooks::PRESERVE),
                ignore_paths: i.hooks.contains(wit::Hooks::IGNORE_PATHS),
            },
            reads: i.reads,
        }
    }
}

/// The intent as the 0.2.0 WIT carries it, restricted to what the plugin reads.
fn wit_intent(intent: &Intent, reads: &[String]) -> wit::Intent {
    match intent.within(reads) {
        Intent::Unknown => wit::Intent::Unknown,
        Intent::ServerSet(paths) => wit::Intent::ServerSet(paths),
    }
}

/// A compiled, checked plugin. Cheap to clone; calls never share state, unless
/// [`Plugin::with_instances`] made it reuse instances.
#[derive(Clone)]
pub struct Plugin {
    engine: PluginEngine,
    info: PluginInfo,
    digest: String,
    /// The compiled component; its baseline code is replaced by optimized code in place.
    code: Arc<Code>,
    /// Idle instances, when the plugin runs with [`InstancePolicy::Reused`].
    kept: Option<Arc<Kept>>,
    /// Objects whose latest call ended at the deadline; their calls run one at a time.
    overruns: Arc<Overruns>,
}

/// The idle instances of a plugin that reuses them. Shared by the plugin's clones.
#[derive(Default)]
struct Kept {
    idle: Mutex<Vec<KeptInstance>>,
}

/// An instance kept between calls, with its store.
struct KeptInstance {
    store: Store<CallState>,
    /// The code it was made from: once optimized code is in use, baseline instances go.
    tier: Tier,
    bound: Bound,
    /// Calls served so far.
    calls: u32,
}

impl Kept {
    fn take(&self, tier: Tier) -> Option<KeptInstance> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|i| i.tier == tier);
        idle.pop()
    }

    fn put(&self, instance: KeptInstance) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_KEPT_INSTANCES {
            idle.push(instance);
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).field("digest", &self.digest).finish()
    }
}

pub use crate::sync::syncer::object_ref;

impl Plugin {
    /// Loads a plugin from a file: compiles it (or takes it from the engine's cache), checks
    /// that it implements the `rule` world, and calls `describe`. The file stem names it in
    /// errors until `describe` gives its name.
    pub fn load_file(engine: &PluginEngine, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let label = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
        Self::load(engine, label, &bytes)
    }

    /// Loads a plugin from its bytes; `label` names it in errors until `describe` gives its name.
    pub fn load(engine: &PluginEngine, label: &str, bytes: &[u8]) -> Result<Self> {
        let (digest, code) = engine.prepare(label, bytes)?;
        Self::new(engine.clone(), label, digest, code)
    }

    fn new(engine: PluginEngine, label: &str, digest: String, code: Arc<Code>) -> Result<Self> {
        let wit = match code.current().pre {
            RulePre::V0_1(_) => WitVersion::V0_1,
            RulePre::V0_2(_) => WitVersion::V0_2,
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
        let mut plugin = Self { engine, info, digest, code, kept: None, overruns: Arc::default() };
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
                    "instances: reused ignored: the plugin does not declare itself stateless \
                     (version build metadata '+{STATELESS}'); every call gets a fresh instance"
                );
                None
            }
        };
        plugin
    }

    /// The instance policy in force (after the stateless check).
    pub fn instances(&self) -> InstancePolicy {
        if self.kept.is_some() { InstancePolicy::Reused } else { InstancePolicy::Fresh }
    }

    /// Runs one hook in a fresh store with the fuel budget, the deadline and the memory cap.
    /// The store is dropped afterwards, trapped or not, so nothing leaks into the next call.
    /// A plugin that reuses instances runs the hook in a kept one instead.
    fn call(&self, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
        let turn = self.overruns.turn(object);
        let called = match turn {
            Some(_) => self.call_at_lowest_priority(hook, object),
            None => self.call_unthrottled(hook, object),
        };
        drop(turn);
        let overran = matches!(&called, Err(e) if e.failure() == Some(CallFailure::Deadline));
        self.overruns.record(object, overran);
        called
    }

    /// Runs the call of an object whose latest call ran to the deadline (so likely spins again)
    /// on a thread of its own at the lowest CPU priority: it then takes only the CPU that
    /// syncing, `/healthz` and the API servers leave, and still ends at its wall-clock deadline.
    /// A thread of its own because an unprivileged thread cannot raise its priority again; a
    /// thread start is some tens of microseconds, against a call that took a whole deadline.
    fn call_at_lowest_priority(&self, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new().name("downsync-runaway".into()).spawn_scoped(scope, || {
                let _entered = span.enter();
                super::priority::lower_this_thread(super::priority::RUNAWAY, "runaway call");
                self.call_unthrottled(hook, object)
            });
            match spawned {
                Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => {
                    tracing::debug!(error = %e, plugin = %self.info.name, "cannot start a thread for a runaway call; calling here");
                    self.call_unthrottled(hook, object)
                }
            }
        })
    }

    fn call_unthrottled(&self, hook: &Hook<'_>, object: &str) -> Result<Called<Raw>> {
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
    fn new_store(&self, code: &Compiled, object: &str) -> Store<CallState> {
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
    fn arm(&self, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        store.set_fuel(self.engine.config().fuel)?;
        store.set_epoch_deadline(self.engine.deadline_ticks());
        Ok(())
    }

    /// A one-line error for a failed call: the failure class and the first line of its cause
    /// (a guest panic's message, the trap, the limit hit). The full error with the wasm
    /// backtrace goes to the debug log.
    fn call_error(&self, store: &Store<CallState>, hook: &'static str, object: &str, e: wasmtime::Error) -> Error {
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

    /// The JSON text a hook is given: the projection on `reads`, or the whole object.
    fn input(&self, obj: &Value, reads: &[String]) -> String {
        if self.info.reads.is_empty() { obj.to_string() } else { projection::project_text(obj, reads) }
    }

    /// What a hook returned, merged into the full object when the plugin was sent a projection.
    fn merged(&self, hook: &'static str, object: &str, full: &Value, out: Value, reads: &[String]) -> Result<Value> {
        if self.info.reads.is_empty() {
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
    fn decision(&self, object: &str, desired: &Value, reads: &[String], out: Called<Raw>) -> Result<Called<Decision>> {
        let Raw::Decision(decision) = out.value else { return Err(self.mismatch("preserve")) };
        let decision = decision.map_err(|message| self.rejected("preserve", object, &message))?;
        let value = match decision {
            wit::Decision::Apply(text) => {
                let value = self.parse_output("preserve", object, &text)?;
                Decision::Apply(self.merged("preserve", object, desired, value, reads)?)
            }
            wit::Decision::Recreate(reason) => Decision::Recreate(bounded(&reason, MAX_MESSAGE_BYTES)),
            wit::Decision::Skip(reason) => Decision::Skip(bounded(&reason, MAX_MESSAGE_BYTES)),
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
    fn rejected(&self, hook: &'static str, object: &str, message: &str) -> Error {
        Error::Rejected {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            message: bounded(message, MAX_MESSAGE_BYTES),
        }
    }

    fn parse_output(&self, hook: &'static str, object: &str, text: &str) -> Result<Value> {
        if text.len() > MAX_OUTPUT_BYTES {
            return Err(Error::TooLarge {
                plugin: self.info.name.clone(),
                hook,
                object: object.to_string(),
                what: Oversize::Object,
                size: text.len(),
                limit: MAX_OUTPUT_BYTES,
            });
        }
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

/// The largest object (JSON text) `transform` or `preserve` may return.
pub const MAX_OUTPUT_BYTES: usize = 4 << 20;
/// The longest error message or reason kept from a plugin; the rest is cut with a marker.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most paths `ignore-paths` may return.
pub const MAX_IGNORE_PATHS: usize = 1024;
/// The longest path `ignore-paths` may return.
pub const MAX_IGNORE_PATH_BYTES: usize = 1024;
/// The longest cause kept in a call error.
const MAX_CAUSE_CHARS: usize = 200;

/// `text` cut to about `max` bytes (on a character boundary) with a marker saying how much
/// was cut, control characters escaped: plugin text ends up in logs, events and errors.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return escape(text, usize::MAX);
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes truncated)", escape(&text[..cut], usize::MAX), text.len() - cut)
}

/// The first line of what made a call fail: a guest panic's message (Rust guests write it to
/// stderr, then abort with an `unreachable` trap), else the trap, else the innermost error.
fn cause(e: &wasmtime::Error, stderr: &str) -> String {
    let line = if let Some(message) = panic_message(stderr) {
        format!("guest panicked: {message}")
    } else if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        // wasmtime's text already starts with "wasm trap: ".
        let text = trap.to_string();
        if text.starts_with("wasm trap") { text } else { format!("wasm trap: {text}") }
    } else {
        let root = e.root_cause().to_string();
        let first = root.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_string();
        if first.is_empty() { "unknown error".to_string() } else { first }
    };
    escape(&line, MAX_CAUSE_CHARS)
}

/// The message of a Rust panic in captured stderr: the line after `panicked at <place>:`.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let at = lines.find(|l| l.contains("panicked at "))?;
    // Rust >= 1.73 puts the message on the next line; older versions after `panicked at '`.
    let place = at.split_once("panicked at ").map_or("", |(_, p)| p).trim_end_matches(':');
    let message = lines.next().map(str::trim).filter(|m| !m.is_empty() && !m.starts_with("note:"));
    Some(match message {
        Some(m) => format!("{m} (at {place})"),
        None => place.to_string(),
    })
}

fn classify(e: &wasmtime::Error, memory_denied: bool) -> CallFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => CallFailure::OutOfFuel,
        Some(wasmtime::Trap::Interrupt) => CallFailure::Deadline,
        _ if memory_denied => CallFailure::Memory,
        _ => CallFailure::Trap,
    }
}

/// The most kind patterns and scope patterns `describe` may list, and the longest of each.
const MAX_DESCRIBE_ENTRIES: usize = 256;
const MAX_DESCRIBE_FIELD_BYTES: usize = 1024;

fn check_describe(label: &str, raw: RawInfo) -> Result<PluginInfo> {
    let bad = |message: String| Error::Describe { plugin: label.to_string(), message };
    // Shown in messages: what a plugin says is bounded before it reaches a log line.
    let show = |text: &str| format!("{:?}", bounded(text, 100));
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(bad(format!("name {} must be 1-63 lowercase letters, digits or '-'", show(&raw.name))));
    }
    if raw.version.is_empty() || raw.version.len() > 64 || raw.version.chars().any(char::is_control) {
        return Err(bad(format!("version {} must be 1-64 printable characters", show(&raw.version))));
    }
    if raw.kinds.is_empty() {
        return Err(bad("it handles no kinds".into()));
    }
    if raw.kinds.len() > MAX_DESCRIBE_ENTRIES
        || raw.scope.len() > MAX_DESCRIBE_ENTRIES
        || raw.reads.len() > MAX_DESCRIBE_ENTRIES
    {
        return Err(bad(format!(
            "{} kind patterns, {} scope patterns and {} reads; the limit is {MAX_DESCRIBE_ENTRIES} each",
            raw.kinds.len(),
            raw.scope.len(),
            raw.reads.len()
        )));
    }
    for (group, kind) in &raw.kinds {
        if kind.is_empty() {
            return Err(bad(format!("kind pattern with group {} has an empty kind", show(group))));
        }
        if kind.len() + group.len() > MAX_DESCRIBE_FIELD_BYTES {
            return Err(bad(format!("kind pattern {}/{} is too long", show(group), show(kind))));
        }
    }
    if raw.hooks == (Hooks { transform: false, preserve: false, ignore_paths: false }) {
        return Err(bad("it lists no hooks (transform, preserve, ignore-paths)".into()));
    }
    check_reads(&raw.reads, &raw.scope).map_err(bad)?;
    for s in &raw.scope {
        if !s.starts_with('/') || s == "/" || s.len() > MAX_DESCRIBE_FIELD_BYTES {
            return Err(bad(format!(
                "scope {} is not a JSON pointer below the root of at most {MAX_DESCRIBE_FIELD_BYTES} bytes",
                show(s)
            )));
        }
    }
    Ok(PluginInfo {
        name: raw.name,
        version: raw.version,
        kinds: raw.kinds.into_iter().map(|(group, kind)| KindPattern { group, kind }).collect(),
        scope: raw.scope,
        wit: raw.wit,
        hooks: raw.hooks,
        reads: raw.reads,
    })
}

/// Reads must be plain JSON pointers below the root (no wildcards), and, when there are any,
/// every scope pattern must lie inside one: a plugin cannot write what it is not sent.
fn check_reads(reads: &[String], scope: &[String]) -> std::result::Result<(), String> {
    for r in reads {
        let segments = crate::sync::pointer::parse(r).ok().filter(|s| !s.is_empty());
        let Some(segments) = segments.filter(|_| r.len() <= MAX_DESCRIBE_FIELD_BYTES) else {
            return Err(format!(
                "read {:?} is not a JSON pointer below the root of at most {MAX_DESCRIBE_FIELD_BYTES} bytes",
                bounded(r, 100)
            ));
        };
        if segments.iter().any(|s| s == crate::sync::pointer::WILDCARD) {
            return Err(format!("read {:?} has a wildcard; reads are plain JSON pointers", bounded(r, 100)));
        }
    }
    if reads.is_empty() {
        return Ok(());
    }
    for pattern in scope {
        let Ok(pat) = crate::sync::pointer::parse(pattern) else { continue };
        let inside = reads
            .iter()
            .filter_map(|r| crate::sync::pointer::parse(r).ok())
            .any(|r| r.len() <= pat.len() && r.iter().zip(&pat).all(|(a, b)| a == b));
        if !inside {
            return Err(format!(
                "scope {:?} is outside every read {:?}: the plugin would never be sent what it writes",
                bounded(pattern, 100),
                reads
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_raw(name: &str, version: &str, kinds: usize, scope: &[&str]) -> RawInfo {
        RawInfo {
            name: name.into(),
            version: version.into(),
            kinds: (0..kinds).map(|i| (String::new(), format!("K{i}"))).collect(),
            scope: scope.iter().map(|s| (*s).to_string()).collect(),
            wit: WitVersion::V0_2,
            hooks: Hooks::ALL,
            reads: Vec::new(),
        }
    }

    #[test]
    fn reads_must_be_plain_pointers_that_hold_every_scope_and_some_hook_is_listed() {
        let with = |reads: &[&str], scope: &[&str]| {
            let mut raw = mk_raw("p", "0.2.0", 1, scope);
            raw.reads = reads.iter().map(|s| (*s).to_string()).collect();
            check_describe("p", raw)
        };
        assert!(with(&["/spec"], &["/spec/ports/*/nodePort", "/spec/clusterIP"]).is_ok());
        assert!(with(&[], &["/spec/x"]).is_ok(), "no reads: the whole object");
        let err = with(&["/spec/ports/0"], &["/spec/ports/*/nodePort"]).expect_err("a wildcard scope is wider");
        assert!(err.to_string().contains("outside every read"), "{err}");
        assert!(with(&["/metadata"], &["/spec/x"]).is_err());
        assert!(with(&["/spec/*"], &[]).is_err(), "no wildcards in reads");
        assert!(with(&["spec"], &[]).is_err(), "not a pointer");
        let mut none = mk_raw("p", "0.2.0", 1, &[]);
        none.hooks = Hooks { transform: false, preserve: false, ignore_paths: false };
        assert!(check_describe("p", none).expect_err("no hooks").to_string().contains("no hooks"));
    }

    #[test]
    fn describe_output_is_bounded_and_shown_bounded() {
        assert!(check_describe("p", mk_raw("p", "0.1.0", 1, &["/spec"])).is_ok());
        let huge = "x".repeat(1 << 20);
        let err = check_describe("p", mk_raw(&huge, "0.1.0", 1, &[])).expect_err("long name");
        assert!(err.to_string().len() < 300, "{err}");
        assert!(check_describe("p", mk_raw("p", &huge, 1, &[])).is_err());
        assert!(check_describe("p", mk_raw("p", "1\n2", 1, &[])).is_err());
        assert!(check_describe("p", mk_raw("p", "0.1.0", 10_000, &[])).is_err());
        let long_scope = format!("/spec/{huge}");
        let err = check_describe("p", mk_raw("p", "0.1.0", 1, &[&long_scope])).expect_err("long scope");
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary_with_a_marker_and_escapes() {
        assert_eq!(bounded("short\nline", 1024), "short\\nline");
        let cut = bounded(&"é".repeat(1000), 1025);
        assert!(cut.starts_with(&"é".repeat(512)) && cut.ends_with("… (976 bytes truncated)"), "{cut}");
    }

    #[test]
    fn a_rust_panic_message_is_found_in_stderr() {
        let stderr =
            "\nthread '<unnamed>' panicked at src/lib.rs:20:19:\nasked to trap\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("asked to trap (at src/lib.rs:20:19)"));
        assert_eq!(panic_message("some other output\n"), None);
        let e = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(cause(&e, stderr), "guest panicked: asked to trap (at src/lib.rs:20:19)");
        assert!(cause(&e, "").starts_with("wasm trap: "), "{}", cause(&e, ""));
        let nested = wasmtime::Error::msg("root cause\nmore").context("outer\nbacktrace");
        assert_eq!(cause(&nested, ""), "root cause");
    }
}
