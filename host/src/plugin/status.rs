//! The reloader's status view: per plugin file what is loaded, its calls and failures, its
//! rollout; the body of `/plugins`, and the lines `/readyz` shows.

use std::path::PathBuf;
use std::sync::PoisonError;
use std::time::SystemTime;

use super::error::CallFailure;
use super::oci::SourceState;
use super::reload::{Reloader, Slot};
use super::rollout::{RolloutMode, Stage, Trial};

/// The state of one plugin file, for /readyz and the CLI.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginStatus {
    /// The plugin's name once loaded; the file stem until then.
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// sha256 of the version in use, if any.
    pub digest: Option<String>,
    /// When the version in use was swapped in.
    pub loaded_at: Option<SystemTime>,
    /// Why the latest version on disk was refused (or rolled back), if it was.
    pub last_error: Option<String>,
    /// sha256 of a new version running in shadow, if any.
    pub shadow_digest: Option<String>,
    /// The rollout state, as `/plugins` shows it (`active`, `shadow`, `previousDigest`, ...).
    pub rollout: serde_json::Value,
    /// For a plugin from a registry: its source, digest, signer and last check.
    pub source: Option<SourceState>,
}

/// The rollout state of one file for `/plugins`: the trial of the version in use, the shadow
/// and its progress, the version kept to roll back to, the last rollback or promotion.
fn rollout_json(s: &Slot) -> serde_json::Value {
    let trial_json = |t: &Trial| {
        let (stats, settings) = (t.stats(), t.settings());
        serde_json::json!({
            "stage": t.stage(),
            "open": !t.is_settled(),
            "calls": stats.calls,
            "errors": stats.errors,
            "divergences": stats.divergences,
            "fuel": stats.fuel,
            "elapsedSeconds": t.elapsed().as_secs(),
            "windowCalls": settings.window_calls,
            "windowSeconds": settings.window_seconds,
            "promote": if settings.mode == RolloutMode::Manual { "manual" } else { "auto" },
            "lastDivergence": t.last_divergence(),
        })
    };
    serde_json::json!({
        "trial": s.trial.as_deref().map(trial_json),
        "previousDigest": s.previous.as_ref().map(|p| p.digest().to_string()),
        "shadow": s.shadow.as_ref().map(|(p, t, _)| {
            let mut j = trial_json(t);
            j["digest"] = p.digest().into();
            j["awaitingPromotion"] = s.awaiting.into();
            j
        }),
        "lastRollout": s.last_rollout,
    })
}

impl Reloader {
    /// Per plugin file: what is loaded (name, WIT version, hooks, reads, digest, since when),
    /// calls by hook, failed calls by class, the last failed call and the last refused
    /// version; the body of `/plugins`.
    pub fn status_json(&self) -> serde_json::Value {
        let registry = self.registry();
        let (set, metrics) = (registry.snapshot(), registry.metrics());
        let plugins: Vec<serde_json::Value> = self
            .status()
            .into_iter()
            .map(|s| {
                let info = set.get(&s.name).map(|l| l.plugin.info().clone());
                let code = set.get(&s.name).map(|l| l.plugin.tier());
                let calls: serde_json::Map<String, serde_json::Value> = ["transform", "preserve", "ignore-paths"]
                    .into_iter()
                    .map(|h| (h.to_string(), metrics.calls(&s.name, h).into()))
                    .collect();
                let errors: serde_json::Map<String, serde_json::Value> = CallFailure::ALL
                    .into_iter()
                    .map(|c| (c.as_str().to_string(), metrics.errors(&s.name, c)))
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| (c, n.into()))
                    .collect();
                let loaded_at =
                    s.loaded_at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
                serde_json::json!({
                    "name": s.name,
                    "file": s.file,
                    "digest": s.digest,
                    "loadedAtUnixSeconds": loaded_at,
                    "wit": info.as_ref().map(|i| i.wit),
                    "code": code,
                    "hooks": info.as_ref().map(|i| i.hooks),
                    "reads": info.as_ref().map(|i| i.reads.clone()),
                    "kinds": info.as_ref().map(|i| i.kinds.clone()),
                    "calls": calls,
                    "errors": errors,
                    "lastError": metrics.last_error(&s.name),
                    "refusedVersion": s.last_error,
                    "shadowDigest": s.shadow_digest,
                    "shadowCalls": metrics.shadow_calls(&s.name),
                    "divergences": metrics.divergences(&s.name),
                    "promotions": metrics.promotions(&s.name),
                    "rollbacks": metrics.rollbacks(&s.name),
                    "rollout": s.rollout,
                    "source": s.source,
                })
            })
            .collect();
        serde_json::json!({ "plugins": plugins })
    }

    /// One line per plugin whose calls have failed: the counts by class and the last error.
    pub fn runtime_failures(&self) -> Vec<String> {
        let metrics = self.registry().metrics();
        self.status()
            .into_iter()
            .filter_map(|s| {
                let counts: Vec<String> = CallFailure::ALL
                    .into_iter()
                    .map(|c| (c, metrics.errors(&s.name, c)))
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                // Counts only: the error text may hold what the plugin read, and this line is
                // served on the probes' port, which answers anyone. /plugins has the text.
                metrics.last_error(&s.name)?;
                Some(format!(
                    "plugin {} fails at run time ({}); its last error is on /plugins",
                    s.name,
                    counts.join(", ")
                ))
            })
            .collect()
    }

    /// The state of every plugin file seen, by file name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let pulled = self.pulled.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .map(|(stem, s)| PluginStatus {
                source: pulled.get(stem).map(|e| e.state.clone()),
                name: s.good.as_ref().map_or_else(|| stem.clone(), |(p, _)| p.name().to_string()),
                file: s.file.clone(),
                digest: s.good.as_ref().map(|(p, _)| p.digest().to_string()),
                loaded_at: s.good.as_ref().map(|(_, at)| *at),
                last_error: s.last_error.clone(),
                shadow_digest: s.shadow.as_ref().map(|(p, _, _)| p.digest().to_string()),
                rollout: rollout_json(s),
            })
            .collect()
    }

    /// One line per brand-new plugin (no earlier version to roll back to) whose calls mostly
    /// fail: `/readyz` says so even without `verbose`.
    pub fn failing_without_fallback(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .filter_map(|(stem, s)| {
                let trial = s.trial.as_ref().filter(|t| t.stage() == Stage::New)?;
                let (stats, settings) = (trial.stats(), trial.settings());
                // Every call so far failed: named at once, however few (a failing object is
                // parked after its first call, so the count may never reach `min_calls`).
                let failing = settings.failing(&stats) || (stats.calls > 0 && stats.errors == stats.calls);
                failing.then(|| {
                    let name = s.good.as_ref().map_or(stem.as_str(), |(p, _)| p.name());
                    format!(
                        "plugin {name} has no earlier version to roll back to and {} of its {} calls failed; its objects are held back",
                        stats.errors, stats.calls
                    )
                })
            })
            .collect()
    }
}
