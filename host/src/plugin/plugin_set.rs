//! A set of loaded plugins: immutable once built, checked for duplicate names and overlapping
//! write scopes, in call order (priority, name); and the hook chains run over it, with shadow
//! calls, metrics and the explain record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::component::Plugin;
use super::contract::{self, patterns_overlap};
use super::error::{CallFailure, Error, Result};
use super::journal;
use super::metrics::Metrics;
use super::rollout::{Trial, compare_decisions, compare_values, decision_name};
use super::settings::{FailurePolicy, PluginSettings, RegistryConfig};
use super::types::{Called, Decision, Hooks, PluginInfo, group_kind};
use crate::sync::differ::delta;
use crate::sync::intent::Intent;
use crate::sync::rules::{RuleDecision, RuleError};
use crate::sync::syncer::object_ref;

#[derive(Debug, Clone)]
pub struct Loaded {
    /// The plugin.
    pub plugin: Plugin,
    /// Its settings.
    pub settings: PluginSettings,
    /// The trial of this version, while it is on one (or, for a brand-new plugin, its counts).
    pub trial: Option<Arc<Trial>>,
    /// A newer version running beside this one, compared and never used.
    pub shadow: Option<Shadow>,
}

/// A version running in shadow.
#[derive(Debug, Clone)]
pub struct Shadow {
    /// The new version.
    pub plugin: Plugin,
    /// Its counts.
    pub trial: Arc<Trial>,
}

/// One plugin of a set as the reloader builds it: the active version, its trial, its shadow.
#[derive(Debug, Clone)]
pub struct Member {
    /// The active version.
    pub plugin: Plugin,
    /// Its trial, if on one.
    pub trial: Option<Arc<Trial>>,
    /// A new version in shadow.
    pub shadow: Option<Shadow>,
}

impl Loaded {
    /// The shadow, while its trial is open (a settled one no longer runs).
    fn live_shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref().filter(|s| !s.trial.is_settled())
    }
}

/// An immutable set of plugins, checked for pins and overlapping scopes, in call order.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Sorted by (priority, name); names are unique.
    entries: Vec<Loaded>,
    /// `ignore_paths` answers by (group, kind); only complete (error-free) answers are kept.
    ignore_cache: Mutex<HashMap<(String, String), Vec<String>>>,
    /// Sorted `name@digest`, comma-separated; computed once (the syncer asks per object).
    fingerprint: String,
    /// The fingerprint plus the shadow versions: what a reload compares to see a change.
    identity: String,
}

impl PluginSet {
    /// Builds a set, taking each plugin's settings from `config`.
    ///
    /// Refuses two components with the same name, and two
    /// plugins that handle a common kind with overlapping write scopes.
    pub fn new(plugins: Vec<Plugin>, config: &RegistryConfig) -> Result<Self> {
        Self::from_members(
            plugins.into_iter().map(|plugin| Member { plugin, trial: None, shadow: None }).collect(),
            config,
        )
    }

    /// Builds a set of active versions with their trials and shadows, checked as [`PluginSet::new`].
    pub fn from_members(members: Vec<Member>, config: &RegistryConfig) -> Result<Self> {
        let mut entries = Vec::with_capacity(members.len());
        for Member { plugin, trial, shadow } in members {
            let settings = config.settings(plugin.name());
            // Each version runs in the instances it declares (reused when stateless): the
            // author's promise decides, there is no setting.
            let plugin = plugin.with_declared_instances();
            let shadow = shadow.map(|s| Shadow { plugin: s.plugin.with_declared_instances(), ..s });
            entries.push(Loaded { plugin, settings, trial, shadow });
        }
        entries.sort_by(|a, b| (a.settings.priority, a.plugin.name()).cmp(&(b.settings.priority, b.plugin.name())));
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[i + 1..] {
                if a.plugin.name() == b.plugin.name() {
                    return Err(Error::DuplicateName {
                        name: a.plugin.name().to_string(),
                        first_digest: a.plugin.digest().to_string(),
                        second_digest: b.plugin.digest().to_string(),
                    });
                }
                check_overlap(a.plugin.info(), b.plugin.info())?;
            }
        }
        let mut ids: Vec<String> =
            entries.iter().map(|e| format!("{}@{}", e.plugin.name(), e.plugin.digest())).collect();
        ids.sort();
        let fingerprint = ids.join(",");
        let mut shadows: Vec<String> = entries
            .iter()
            .filter_map(|e| e.shadow.as_ref().map(|s| format!("{}@{}", s.plugin.name(), s.plugin.digest())))
            .collect();
        shadows.sort();
        let identity = format!("{fingerprint}|shadow:{}", shadows.join(","));
        Ok(Self { entries, ignore_cache: Mutex::default(), fingerprint, identity })
    }

    /// The fingerprint plus the versions in shadow: differs whenever calls would differ.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `name@digest` of the shadow versions running for one kind, comma-separated.
    pub fn shadow_fingerprint_for(&self, group: &str, kind: &str) -> String {
        let ids: Vec<String> = self
            .matching(group, kind)
            .filter_map(|e| e.live_shadow().map(|s| format!("{}@{}", s.plugin.name(), s.plugin.digest())))
            .collect();
        ids.join(",")
    }

    /// Whether a shadow version is running for this kind (the syncer then runs the rules even
    /// when nothing changed, so the shadow sees every object).
    pub fn shadowing(&self, group: &str, kind: &str) -> bool {
        self.matching(group, kind).any(|e| e.live_shadow().is_some())
    }

    /// The plugins in call order.
    pub fn plugins(&self) -> &[Loaded] {
        &self.entries
    }

    /// The plugin with this name.
    pub fn get(&self, name: &str) -> Option<&Loaded> {
        self.entries.iter().find(|e| e.plugin.name() == name)
    }

    /// Sorted `name@digest` of every plugin, comma-separated.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// `name@digest` of the plugins that handle one kind, in call order, comma-separated.
    pub fn fingerprint_for(&self, group: &str, kind: &str) -> String {
        let ids: Vec<String> =
            self.matching(group, kind).map(|e| format!("{}@{}", e.plugin.name(), e.plugin.digest())).collect();
        ids.join(",")
    }

    fn matching<'a>(&'a self, group: &'a str, kind: &'a str) -> impl Iterator<Item = &'a Loaded> + 'a {
        self.entries.iter().filter(move |e| e.plugin.info().handles(group, kind))
    }
}

/// Refuses two plugins that handle a common kind and whose scopes can touch the same field.
fn check_overlap(a: &PluginInfo, b: &PluginInfo) -> Result<()> {
    for ka in &a.kinds {
        for kb in &b.kinds {
            let common = |x: &str, y: &str| x == y || x == "*" || y == "*";
            if !(common(&ka.group, &kb.group) && common(&ka.kind, &kb.kind)) {
                continue;
            }
            for pa in &a.scope {
                if let Some(pb) = b.scope.iter().find(|pb| patterns_overlap(pa, pb)) {
                    let (first, second, first_pattern, second_pattern) =
                        if a.name <= b.name { (&a.name, &b.name, pa, pb) } else { (&b.name, &a.name, pb, pa) };
                    return Err(Error::Overlap {
                        first: first.clone(),
                        second: second.clone(),
                        kind: format!("{}/{}", pick(&ka.group, &kb.group), pick(&ka.kind, &kb.kind)),
                        first_pattern: first_pattern.clone(),
                        second_pattern: second_pattern.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The more specific of two compatible pattern parts.
fn pick<'a>(x: &'a str, y: &'a str) -> &'a str {
    if x == "*" { y } else { x }
}

/// Runs one hook of the active version and records its metrics and its trial's counts.
fn observe<T>(
    metrics: &Metrics,
    entry: &Loaded,
    hook: &'static str,
    f: impl FnOnce(&Plugin) -> Result<Called<T>>,
) -> (Result<Called<T>>, Duration) {
    let started = Instant::now();
    let outcome = f(&entry.plugin);
    metrics.record(entry.plugin.name(), hook, started, &outcome);
    if let Some(trial) = &entry.trial {
        trial.record(outcome.is_err(), outcome.as_ref().map_or(0, |c| c.fuel));
    }
    (outcome, started.elapsed())
}

/// Runs one hook of the shadow version, if one is running, on the same input; counts it and
/// compares its result with the active version's through `compare`. Its result is dropped.
fn shadow_call<T>(
    metrics: &Metrics,
    entry: &Loaded,
    object: &str,
    f: impl FnOnce(&Plugin) -> Result<Called<T>>,
    compare: impl FnOnce(Result<&T, &str>) -> Option<String>,
) {
    let Some(shadow) = entry.live_shadow() else { return };
    let outcome = f(&shadow.plugin);
    let message = outcome.as_ref().err().map(|e| e.failure().map_or("other", CallFailure::as_str).to_string());
    metrics.record_shadow_call(entry.plugin.name(), message.as_deref());
    shadow.trial.record(outcome.is_err(), outcome.as_ref().map_or(0, |c| c.fuel));
    let result = match &outcome {
        Ok(c) => Ok(&c.value),
        Err(_) => Err(message.as_deref().unwrap_or("other")),
    };
    if let Some(what) = compare(result) {
        metrics.record_divergence(entry.plugin.name());
        shadow.trial.record_divergence(object, &what);
    }
}

/// The explain record of one active call.
fn journal_entry(
    entry: &Loaded,
    hook: &'static str,
    changed: Option<crate::sync::differ::Delta>,
    decision: String,
    fuel: u64,
    took: Duration,
) -> journal::Entry {
    let digest = entry.plugin.digest();
    let changed = changed.unwrap_or_default();
    journal::Entry {
        plugin: entry.plugin.name().to_string(),
        digest: digest.get(..12).unwrap_or(digest).to_string(),
        hook,
        paths: changed.paths,
        truncated: changed.truncated,
        decision,
        fuel,
        micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        at_unix_seconds: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}

/// The failure class of a failed call, for comparisons and the record.
fn failure_of(e: &Error) -> &'static str {
    e.failure().map_or("other", CallFailure::as_str)
}

/// Applies the plugin's failure policy: `Ok(())` means "skip it for this call".
fn on_failure(entry: &Loaded, hook: &str, object: &str, e: Error) -> Result<(), RuleError> {
    let plugin = entry.plugin.name();
    let failure = e.failure().map_or("other", CallFailure::as_str);
    match entry.settings.failure_policy {
        FailurePolicy::FailClosed => {
            tracing::warn!(plugin, object, hook, failure, error = %e, "plugin failed; object not written (fail-closed)");
            // Only the wall-clock deadline depends on the moment; everything else is a verdict.
            let retryable = matches!(e.failure(), Some(CallFailure::Deadline));
            Err(RuleError { rule: plugin.to_string(), object: object.to_string(), message: e.to_string(), retryable })
        }
        FailurePolicy::FailOpen => {
            tracing::warn!(plugin, object, hook, failure, error = %e, "plugin failed; skipped for this object (fail-open)");
            Ok(())
        }
    }
}

/// The hook chains over one set. They block (each call runs WASM), so the async
/// [`RuleSet`](crate::sync::rules::RuleSet) runs them on the blocking pool.
impl PluginSet {
    /// Whether any plugin handles this group and kind.
    pub fn handles(&self, group: &str, kind: &str) -> bool {
        self.matching(group, kind).next().is_some()
    }

    /// Whether any plugin that handles this group and kind implements `hook`.
    pub fn implements(&self, group: &str, kind: &str, hook: fn(&Hooks) -> bool) -> bool {
        self.matching(group, kind).any(|e| hook(&e.plugin.info().hooks))
    }

    /// Runs every matching plugin's `transform`, in order, checking each output's contract.
    /// Plugins that do not implement it are passed over without a call.
    pub fn transform(&self, metrics: &Metrics, desired: Value, intent: &Intent) -> Result<Value, RuleError> {
        let (group, kind) = group_kind(&desired);
        let object = object_ref(&desired);
        let mut cur = desired;
        let journal = metrics.journal();
        for entry in self.matching(&group, &kind).filter(|e| e.plugin.info().hooks.transform) {
            let call = |p: &Plugin| {
                let called = p.transform(&cur, intent)?;
                contract::check(p.info(), "transform", &cur, &called.value)?;
                Ok(called)
            };
            let (out, took) = observe(metrics, entry, "transform", call);
            let active = out.as_ref().map(|c| &c.value).map_err(failure_of);
            shadow_call(metrics, entry, &object, call, |shadow| compare_values(active, shadow));
            if journal.enabled() {
                let (changed, decision, fuel) = match &out {
                    Ok(c) => (Some(delta(&cur, &c.value)), "apply".to_string(), c.fuel),
                    Err(e) => (None, format!("failed: {}", failure_of(e)), 0),
                };
                journal.record(&object, journal_entry(entry, "transform", changed, decision, fuel, took));
            }
            match out {
                Ok(next) => cur = next.value,
                Err(e) => on_failure(entry, "transform", &object, e)?,
            }
        }
        Ok(cur)
    }

    /// Runs every matching plugin's `preserve`, in order, until one asks to recreate or skip.
    /// Plugins that do not implement it are passed over without a call.
    pub fn preserve(
        &self,
        metrics: &Metrics,
        existing: &Value,
        desired: Value,
        intent: &Intent,
    ) -> Result<RuleDecision, RuleError> {
        let (group, kind) = group_kind(&desired);
        let object = object_ref(&desired);
        let mut cur = desired;
        let journal = metrics.journal();
        for entry in self.matching(&group, &kind).filter(|e| e.plugin.info().hooks.preserve) {
            let call = |p: &Plugin| {
                let called = p.preserve(existing, &cur, intent)?;
                if let Decision::Apply(next) = &called.value {
                    contract::check(p.info(), "preserve", &cur, next)?;
                }
                Ok(called)
            };
            let (out, took) = observe(metrics, entry, "preserve", call);
            let active = out.as_ref().map(|c| &c.value).map_err(failure_of);
            shadow_call(metrics, entry, &object, call, |shadow| compare_decisions(active, shadow));
            if journal.enabled() {
                let (changed, decision, fuel) = match &out {
                    Ok(c) => {
                        let changed = match &c.value {
                            Decision::Apply(next) => Some(delta(&cur, next)),
                            _ => None,
                        };
                        (changed, decision_name(&c.value).to_string(), c.fuel)
                    }
                    Err(e) => (None, format!("failed: {}", failure_of(e)), 0),
                };
                journal.record(&object, journal_entry(entry, "preserve", changed, decision, fuel, took));
            }
            match out.map(|c| c.value) {
                Ok(Decision::Apply(next)) => cur = next,
                Ok(Decision::Recreate(reason)) => {
                    tracing::info!(plugin = entry.plugin.name(), object, kind, reason, "plugin asks to recreate");
                    return Ok(RuleDecision::Recreate(reason));
                }
                Ok(Decision::Skip(reason)) => {
                    tracing::info!(plugin = entry.plugin.name(), object, kind, reason, "plugin asks to skip");
                    return Ok(RuleDecision::Skip(reason));
                }
                Err(e) => on_failure(entry, "preserve", &object, e)?,
            }
        }
        Ok(RuleDecision::Apply(cur))
    }

    pub(super) fn cached_ignore_paths(&self, group: &str, kind: &str) -> Option<Vec<String>> {
        let key = (group.to_string(), kind.to_string());
        self.ignore_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned()
    }

    /// The union of the matching plugins' ignore paths; complete answers are cached per kind.
    pub fn ignore_paths(&self, metrics: &Metrics, group: &str, kind: &str) -> Result<Vec<String>, RuleError> {
        if let Some(hit) = self.cached_ignore_paths(group, kind) {
            return Ok(hit);
        }
        let object = format!("{kind}.{group}");
        let (mut paths, mut complete) = (Vec::<String>::new(), true);
        for entry in self.matching(group, kind).filter(|e| e.plugin.info().hooks.ignore_paths) {
            match observe(metrics, entry, "ignore-paths", |p| p.ignore_paths(group, kind)).0.map(|c| c.value) {
                Ok(found) => {
                    for p in found {
                        if !paths.contains(&p) {
                            paths.push(p);
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    on_failure(entry, "ignore-paths", &object, e)?;
                }
            }
        }
        if complete {
            let key = (group.to_string(), kind.to_string());
            self.ignore_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, paths.clone());
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::contract::mk_info;

    #[test]
    fn overlap_needs_a_common_kind_and_names_both_plugins_and_patterns() {
        let svc = mk_info("service", &[("", "Service")], &["/spec/ports/*/nodePort"]);
        let other_kind = mk_info("ports", &[("apps", "Deployment")], &["/spec/ports"]);
        assert!(check_overlap(&svc, &other_kind).is_ok());
        let any_core = mk_info("ports", &[("", "*")], &["/spec/ports/0"]);
        let err = check_overlap(&any_core, &svc).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Overlap { ref first, ref second, .. } if first == "ports" && second == "service"),
            "{msg}"
        );
        assert!(
            msg.contains("\"/spec/ports/0\"") && msg.contains("\"/spec/ports/*/nodePort\"") && msg.contains("/Service"),
            "{msg}"
        );
    }
}
