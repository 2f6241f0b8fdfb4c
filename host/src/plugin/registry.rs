//! The registry the syncer calls: the loaded plugins behind an atomically swapped snapshot,
//! the core's [`Rules`], each chain run on the blocking pool within the call slots.
//!
//! A [`PluginSet`] is immutable once built and is swapped into a [`PluginRegistry`] as a
//! whole. Calls take a snapshot (an `Arc`) and run without any lock held, so calls in flight
//! finish on the version they started with.

use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use super::plugin_set::PluginSet;
use super::types::group_kind;
use crate::sync::intent::Intent;
use crate::sync::rules::{RuleDecision, RuleError, RuleSet, Rules};
use crate::sync::syncer::object_ref;

/// The loaded plugins behind an atomically swapped snapshot; implements the core's [`Rules`].
///
/// Swaps are pushed to subscribers ([`PluginRegistry::subscribe`]) as the new set's
/// fingerprint, so the sync loop re-queues objects when the rules change instead of polling.
#[derive(Debug)]
pub struct PluginRegistry {
    current: RwLock<Arc<PluginSet>>,
    metrics: Metrics,
    /// Bounds the rule calls running at once on the blocking pool: each holds a pooled instance.
    slots: Arc<Semaphore>,
    changes: tokio::sync::watch::Sender<String>,
}

/// Rule calls that may run at once when no bound is given (the engine's default pool size).
const DEFAULT_CALL_SLOTS: usize = 64;

impl PluginRegistry {
    /// A registry serving `set`, counting into `metrics`.
    pub fn new(set: PluginSet, metrics: Metrics) -> Self {
        let (changes, _) = tokio::sync::watch::channel(set.fingerprint());
        Self {
            current: RwLock::new(Arc::new(set)),
            metrics,
            slots: Arc::new(Semaphore::new(DEFAULT_CALL_SLOTS)),
            changes,
        }
    }

    /// Bounds the rule calls that run at once (at most the engine's instance slots).
    #[must_use]
    pub fn with_call_slots(mut self, slots: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(slots.max(1)));
        self
    }

    /// The set in use now. Holding it keeps that version alive; it never changes.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `set` in use for every call that starts from now on; returns the previous set.
    pub fn swap(&self, set: PluginSet) -> Arc<PluginSet> {
        let fingerprint = set.identity().to_string();
        let new = Arc::new(set);
        let old = {
            let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *current, new)
        };
        self.changes.send_replace(fingerprint);
        old
    }

    /// The fingerprint of the set in use now, and every later one as it is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<String> {
        self.changes.subscribe()
    }

    /// The metrics the registry counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sorted `name@digest` of every plugin in use, comma-separated.
    pub fn fingerprint(&self) -> String {
        self.snapshot().fingerprint()
    }

    /// Runs the `transform` chain on the calling thread (blocking; see [`RuleSnapshot`]), with
    /// the intent read from the object's own `managedFields`.
    pub fn transform(&self, desired: Value) -> Result<Value, RuleError> {
        let intent = Intent::of(&desired);
        self.snapshot().transform(&self.metrics, desired, &intent)
    }

    /// Runs the `preserve` chain on the calling thread (blocking), with the intent read from
    /// the desired object's own `managedFields`.
    pub fn preserve(&self, existing: &Value, desired: Value) -> Result<RuleDecision, RuleError> {
        let intent = Intent::of(&desired);
        self.snapshot().preserve(&self.metrics, existing, desired, &intent)
    }

    /// Asks every matching plugin for its ignore paths on the calling thread (blocking).
    pub fn ignore_paths(&self, group: &str, kind: &str) -> Result<Vec<String>, RuleError> {
        self.snapshot().ignore_paths(&self.metrics, group, kind)
    }
}

/// One version of the plugins, as the syncer uses it for one apply. The hooks run on tokio's
/// blocking pool, at most as many at once as the registry has call slots, never on an async
/// worker thread: a call can take its whole deadline, and a guest that panics or misbehaves
/// must not take a worker with it (a panic comes back as a rule error).
#[derive(Debug, Clone)]
pub struct RuleSnapshot {
    set: Arc<PluginSet>,
    metrics: Metrics,
    slots: Arc<Semaphore>,
}

impl RuleSnapshot {
    /// The set this snapshot serves.
    pub fn set(&self) -> &Arc<PluginSet> {
        &self.set
    }

    async fn offload<T: Send + 'static>(
        &self,
        object: String,
        f: impl FnOnce(&PluginSet, &Metrics) -> Result<T, RuleError> + Send + 'static,
    ) -> Result<T, RuleError> {
        let runtime_error = |message: String| RuleError {
            rule: "plugin runtime".into(),
            object: object.clone(),
            message,
            retryable: true,
        };
        // The semaphore is never closed; failing to acquire would mean it was, so say so.
        let _permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| runtime_error("the plugin call slots are closed".into()))?;
        let (set, metrics) = (Arc::clone(&self.set), self.metrics.clone());
        match tokio::task::spawn_blocking(move || f(&set, &metrics)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let why = panic_message(e.into_panic());
                tracing::error!(object = %object, panic = %why, "a rule call panicked in the host; object not written");
                Err(runtime_error(format!("rule call panicked: {why}")))
            }
            Err(_) => Err(runtime_error("rule call cancelled".into())),
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Rules for PluginRegistry {
    type Set = RuleSnapshot;

    fn snapshot(&self) -> RuleSnapshot {
        RuleSnapshot {
            set: PluginRegistry::snapshot(self),
            metrics: self.metrics.clone(),
            slots: Arc::clone(&self.slots),
        }
    }
}

impl RuleSet for RuleSnapshot {
    fn fingerprint_for(&self, group: &str, kind: &str) -> String {
        self.set.fingerprint_for(group, kind)
    }

    fn shadowing(&self, group: &str, kind: &str) -> bool {
        self.set.shadowing(group, kind)
    }

    async fn transform(&self, desired: Value, intent: &Intent) -> Result<Value, RuleError> {
        let (group, kind) = group_kind(&desired);
        if !self.set.implements(&group, &kind, |h| h.transform) {
            return Ok(desired);
        }
        let intent = intent.clone();
        self.offload(object_ref(&desired), move |set, m| set.transform(m, desired, &intent)).await
    }

    async fn preserve(&self, existing: &Value, desired: Value, intent: &Intent) -> Result<RuleDecision, RuleError> {
        let (group, kind) = group_kind(&desired);
        if !self.set.implements(&group, &kind, |h| h.preserve) {
            return Ok(RuleDecision::Apply(desired));
        }
        let (existing, intent) = (existing.clone(), intent.clone());
        self.offload(object_ref(&desired), move |set, m| set.preserve(m, &existing, desired, &intent)).await
    }

    async fn ignore_paths(&self, group: &str, kind: &str) -> Result<Vec<String>, RuleError> {
        if !self.set.implements(group, kind, |h| h.ignore_paths) {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.set.cached_ignore_paths(group, kind) {
            return Ok(hit);
        }
        let (g, k) = (group.to_string(), kind.to_string());
        self.offload(format!("{kind}.{group}"), move |set, m| set.ignore_paths(m, &g, &k)).await
    }
}
