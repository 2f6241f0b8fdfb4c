//! A loaded plugin: its prepared instance and the hooks, each called in a fresh store (or, for
//! batch work such as benchmarks, in one kept [`Session`]).

use std::path::Path;

use serde_json::Value;
use wasmtime::Store;

use super::bindings::downsync::rules::types as wit;
use super::bindings::{Rule, RulePre};
use super::contract;
use super::engine::PluginEngine;
use super::error::{CallFailure, Error, Result, Violation};
use super::host::CallState;

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
}

impl PluginInfo {
    /// Whether the plugin handles this group and kind.
    pub fn handles(&self, group: &str, kind: &str) -> bool {
        self.kinds.iter().any(|k| k.matches(group, kind))
    }
}

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

/// A compiled, checked plugin. Cheap to clone; calls never share state.
#[derive(Clone)]
pub struct Plugin {
    engine: PluginEngine,
    info: PluginInfo,
    digest: String,
    pre: RulePre<CallState>,
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
        let (digest, pre) = engine.prepare(label, bytes)?;
        Self::new(engine.clone(), label, digest, pre)
    }

    fn new(engine: PluginEngine, label: &str, digest: String, pre: RulePre<CallState>) -> Result<Self> {
        let mut plugin = Self {
            engine,
            info: PluginInfo { name: label.to_string(), version: String::new(), kinds: vec![], scope: vec![] },
            digest,
            pre,
        };
        let raw = plugin.call("describe", "-", |store, rule| rule.downsync_rules_rules().call_describe(store))?.value;
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

    /// Runs one hook in a fresh store with the fuel budget, the deadline and the memory cap.
    /// The store is dropped afterwards, trapped or not, so nothing leaks into the next call.
    fn call<T>(
        &self,
        hook: &'static str,
        object: &str,
        f: impl FnOnce(&mut Store<CallState>, &Rule) -> wasmtime::Result<T>,
    ) -> Result<Called<T>> {
        let cfg = self.engine.config();
        let mut store = self.new_store(object);
        let fail = |store: &Store<CallState>, e: wasmtime::Error| self.call_error(store, hook, object, e);
        if let Err(e) = self.arm(&mut store) {
            return Err(fail(&store, e));
        }
        let rule = match self.pre.instantiate(&mut store) {
            Ok(r) => r,
            Err(e) => return Err(fail(&store, e)),
        };
        match f(&mut store, &rule) {
            Ok(value) => {
                let fuel = cfg.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
                Ok(Called { value, fuel })
            }
            Err(e) => Err(fail(&store, e)),
        }
    }

    /// A store with this plugin's limits; fuel and deadline are set by [`Plugin::arm`].
    fn new_store(&self, object: &str) -> Store<CallState> {
        let cfg = self.engine.config();
        let mut store = Store::new(self.engine.engine(), CallState::new(&self.info.name, object, cfg.memory_bytes));
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Gives `store` a full fuel budget and a fresh deadline, for one call.
    fn arm(&self, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        store.set_fuel(self.engine.config().fuel)?;
        store.set_epoch_deadline(self.engine.deadline_ticks());
        Ok(())
    }

    fn call_error(&self, store: &Store<CallState>, hook: &'static str, object: &str, e: wasmtime::Error) -> Error {
        Error::Call {
            plugin: self.info.name.clone(),
            hook,
            object: object.to_string(),
            kind: classify(&e, store.data().limits.memory_denied),
            message: format!("{e:#}"),
        }
    }

    /// Calls `transform` on the desired object.
    pub fn transform(&self, desired: &Value) -> Result<Called<Value>> {
        let object = object_ref(desired);
        let input = desired.to_string();
        let out = self.call("transform", &object, |s, r| r.downsync_rules_rules().call_transform(s, &input))?;
        let text = out.value.map_err(|message| Error::Rejected {
            plugin: self.info.name.clone(),
            hook: "transform",
            object: object.clone(),
            message,
        })?;
        let value = self.parse_output("transform", &object, &text)?;
        Ok(Called { value, fuel: out.fuel })
    }

    /// Calls `preserve` with the live downstream object and the desired one.
    pub fn preserve(&self, existing: &Value, desired: &Value) -> Result<Called<Decision>> {
        let object = object_ref(desired);
        let (e, d) = (existing.to_string(), desired.to_string());
        let out = self.call("preserve", &object, |s, r| r.downsync_rules_rules().call_preserve(s, &e, &d))?;
        self.decision(&object, out)
    }

    /// Turns what `preserve` returned into a [`Decision`].
    fn decision(&self, object: &str, out: Called<Result<wit::Decision, String>>) -> Result<Called<Decision>> {
        let decision = out.value.map_err(|message| Error::Rejected {
            plugin: self.info.name.clone(),
            hook: "preserve",
            object: object.to_string(),
            message,
        })?;
        let value = match decision {
            wit::Decision::Apply(text) => Decision::Apply(self.parse_output("preserve", object, &text)?),
            wit::Decision::Recreate(reason) => Decision::Recreate(reason),
            wit::Decision::Skip(reason) => Decision::Skip(reason),
        };
        Ok(Called { value, fuel: out.fuel })
    }

    /// Calls `ignore-paths` for a group and kind.
    pub fn ignore_paths(&self, group: &str, kind: &str) -> Result<Called<Vec<String>>> {
        let object = format!("{kind}.{group}");
        self.call("ignore-paths", &object, |s, r| r.downsync_rules_rules().call_ignore_paths(s, group, kind))
    }

    fn parse_output(&self, hook: &'static str, object: &str, text: &str) -> Result<Value> {
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
        let mut store = self.new_store("-");
        let fail = |store: &Store<CallState>, e| self.call_error(store, "instantiate", "-", e);
        if let Err(e) = self.arm(&mut store) {
            return Err(fail(&store, e));
        }
        match self.pre.instantiate(&mut store) {
            Ok(rule) => Ok(Session { plugin: self.clone(), store, rule, broken: false }),
            Err(e) => Err(fail(&store, e)),
        }
    }
}

/// A plugin instance and its store, reused across calls. Made by [`Plugin::session`].
pub struct Session {
    plugin: Plugin,
    store: Store<CallState>,
    rule: Rule,
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
    pub fn preserve(&mut self, existing: &Value, desired: &Value) -> Result<Called<Decision>> {
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
        self.store.data_mut().set_object(&object);
        let (e, d) = (existing.to_string(), desired.to_string());
        let called = plugin
            .arm(&mut self.store)
            .and_then(|()| self.rule.downsync_rules_rules().call_preserve(&mut self.store, &e, &d));
        match called {
            Ok(value) => {
                let fuel = plugin.engine.config().fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
                plugin.decision(&object, Called { value, fuel })
            }
            Err(e) => {
                self.broken = true;
                Err(plugin.call_error(&self.store, "preserve", &object, e))
            }
        }
    }
}

fn classify(e: &wasmtime::Error, memory_denied: bool) -> CallFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => CallFailure::OutOfFuel,
        Some(wasmtime::Trap::Interrupt) => CallFailure::Deadline,
        _ if memory_denied => CallFailure::Memory,
        _ => CallFailure::Trap,
    }
}

fn check_describe(label: &str, raw: wit::PluginInfo) -> Result<PluginInfo> {
    let bad = |message: String| Error::Describe { plugin: label.to_string(), message };
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(bad(format!("name {:?} must be 1-63 lowercase letters, digits or '-'", raw.name)));
    }
    if raw.version.is_empty() {
        return Err(bad("version is empty".into()));
    }
    if raw.kinds.is_empty() {
        return Err(bad("it handles no kinds".into()));
    }
    for k in &raw.kinds {
        if k.kind.is_empty() {
            return Err(bad(format!("kind pattern with group {:?} has an empty kind", k.group)));
        }
    }
    for s in &raw.scope {
        if !s.starts_with('/') || s == "/" {
            return Err(bad(format!("scope {s:?} is not a JSON pointer below the root")));
        }
    }
    Ok(PluginInfo {
        name: raw.name,
        version: raw.version,
        kinds: raw.kinds.into_iter().map(|k| KindPattern { group: k.group, kind: k.kind }).collect(),
        scope: raw.scope,
    })
}
