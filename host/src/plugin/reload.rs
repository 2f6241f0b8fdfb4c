//! Hot reload: watches the plugins folder, checks changed components off the hot path, swaps them in atomically.
//!
//! The folder is watched non-recursively and re-scanned as a whole after any event and on a slow
//! resync timer. A finished write (the file closed after writing) or a rename into the folder is
//! acted on at once; other events (data still being written, a removal, which `ln -sf` follows
//! with a create) wait for a short quiet period first. So a plain write, a write-to-temp-then-rename and a
//! Kubernetes ConfigMap volume's `..data` symlink swap all look the same: `<name>.wasm` (symlinks
//! followed) has new bytes, hence a new sha256. A changed component is compiled and checked on
//! the reload thread — it implements the world, `describe` is sane, the fixtures in
//! `<name>.fixtures/` beside it pass (including "preserve twice equals once"), and the new set
//! has no overlapping scopes — and only then swapped into the registry.
//! A refused version keeps the last good one and is reported once (a log line and the
//! `reload_failures` metric) and in [`Reloader::status`]; it is checked again only when its
//! bytes change or, for a refusal caused by the other plugins, when they change. The watcher's
//! own reads of the folder do not wake it. Hidden entries (`.tmp` files, `..data`) are ignored.
//! A file larger than the plugin file limit (64 MiB), or an entry that is a link leading out of the
//! folder (links inside it, as a ConfigMap's, are followed), is refused before it is read.
//!
//! The folder watch itself is in `watch.rs`, where candidates come from and how one is checked
//! in `candidates.rs`, the status view in `status.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::component::Plugin;
use super::digest::sha256_hex;
use super::engine::PluginEngine;
use super::error::{Error, Result};
use super::oci::PulledEntry;
use super::plugin_set::{Member, PluginSet, Shadow};
use super::registry::PluginRegistry;
use super::rollout::{Stage, Trial, Verdict, Waker};
use super::settings::RegistryConfig;
use super::verdicts::{TrialCounts, VerdictBoard, shared_verdict, stage_name};

/// A rollout the operators should hear of (a rollback, a promotion), for an Event on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The plugin.
    pub plugin: String,
    /// A rollback is a warning; a promotion is not.
    pub warning: bool,
    /// `PluginRolledBack` or `PluginPromoted`.
    pub reason: &'static str,
    /// What happened, with the digests.
    pub message: String,
}

/// Receives [`Notice`]s; called on the reload thread, so it must not block.
pub type Notifier = Arc<dyn Fn(Notice) + Send + Sync>;

/// What the reloader knows about one `<stem>.wasm`.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) file: PathBuf,
    /// The version in use and when it was loaded.
    pub(super) good: Option<(Plugin, SystemTime)>,
    /// The trial of the version in use (probation after a swap, or a brand-new plugin's counts).
    pub(super) trial: Option<Arc<Trial>>,
    /// The version to roll back to while the one in use is on probation.
    pub(super) previous: Option<Plugin>,
    /// A new version running in shadow, and when it started.
    pub(super) shadow: Option<(Plugin, Arc<Trial>, SystemTime)>,
    /// The shadow's window closed but it needs an operator (divergent, or `mode: manual`);
    /// said once.
    pub(super) awaiting: bool,
    /// The last automatic rollback or promotion, for the status.
    pub(super) last_rollout: Option<String>,
    /// Why the latest bytes were refused.
    pub(super) last_error: Option<String>,
    /// The refused bytes, so the same file is not checked again and again.
    refused: Option<Refusal>,
    /// The digest whose refusal was last logged and counted: a refusal is reported once per
    /// version of the file, however often it is checked.
    reported: Option<String>,
}

impl Slot {
    fn new(file: PathBuf) -> Self {
        Self {
            file,
            good: None,
            trial: None,
            previous: None,
            shadow: None,
            awaiting: false,
            last_rollout: None,
            last_error: None,
            refused: None,
            reported: None,
        }
    }
}

/// A refused version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    /// sha256 of the refused bytes.
    digest: String,
    /// For a refusal that depends on the other plugins (overlap, duplicate name): the
    /// [`others`] it was refused against. It is checked again only when that changes. None
    /// when the bytes alone are at fault: checked again only when they change.
    against: Option<String>,
}

/// The versions in use of every file but `stem`, as sorted `stem@digest`: what a newcomer is
/// checked against.
fn others<'a>(good: impl Iterator<Item = (&'a String, &'a str)>, stem: &str) -> String {
    let mut ids: Vec<String> = good.filter(|(s, _)| s.as_str() != stem).map(|(s, d)| format!("{s}@{d}")).collect();
    ids.sort();
    ids.join(",")
}

/// Loads the plugins of a folder into a registry and keeps them current.
pub struct Reloader {
    pub(super) engine: PluginEngine,
    pub(super) dir: PathBuf,
    config: RegistryConfig,
    registry: Arc<PluginRegistry>,
    /// By file stem. Held only to read or update, never across a compile or a plugin call.
    pub(super) slots: Mutex<BTreeMap<String, Slot>>,
    /// Serialises scans (the watcher thread and explicit calls).
    scanning: Mutex<()>,
    /// Wakes the reload thread when a trial may have a verdict (set by [`Reloader::watch`]).
    pub(super) waker: Mutex<Option<Waker>>,
    /// Told of rollbacks and promotions.
    notifier: Mutex<Option<Notifier>>,
    /// Where replicas share trial verdicts (HA), with this replica's identity.
    board: Mutex<Option<(Arc<dyn VerdictBoard>, String)>>,
    /// The plugins that come from registries, by name (see `oci/follow.rs`).
    pub(super) pulled: Mutex<BTreeMap<String, PulledEntry>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("dir", &self.dir).field("config", &self.config).finish_non_exhaustive()
    }
}

/// A file that changed and what came of checking it.
struct Candidate {
    stem: String,
    digest: String,
    checked: Result<Plugin>,
}

impl Reloader {
    /// A reloader for `dir`, serving `registry`, with per-plugin settings from `config`.
    /// Nothing is loaded until [`Reloader::scan`] or [`Reloader::watch`].
    pub fn new(engine: PluginEngine, dir: &Path, config: RegistryConfig, registry: Arc<PluginRegistry>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            dir: dir.to_path_buf(),
            config,
            registry,
            slots: Mutex::default(),
            scanning: Mutex::default(),
            waker: Mutex::default(),
            notifier: Mutex::default(),
            board: Mutex::default(),
            pulled: Mutex::default(),
        })
    }

    /// Shares trial verdicts with other replicas through `board`: one of them decides each
    /// trial from the calls of all, and the others follow (see [`VerdictBoard`]).
    pub fn share_verdicts(&self, board: Arc<dyn VerdictBoard>, identity: &str) {
        *self.board.lock().unwrap_or_else(PoisonError::into_inner) = Some((board, identity.to_string()));
    }

    /// The counts of every version on trial here (shadow or probation, not yet decided), for
    /// the replica that decides.
    pub fn trial_counts(&self) -> Vec<TrialCounts> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for s in slots.values() {
            let shadow = s.shadow.as_ref().map(|(p, t, _)| (p, t));
            let probation = s.good.as_ref().zip(s.trial.as_ref()).map(|((p, _), t)| (p, t));
            for (plugin, trial) in shadow.into_iter().chain(probation) {
                let Some(stage) = stage_name(trial.stage()) else { continue };
                if trial.is_settled() {
                    continue;
                }
                let stats = trial.stats();
                out.push(TrialCounts {
                    plugin: plugin.name().to_string(),
                    digest: plugin.digest().to_string(),
                    stage: stage.to_string(),
                    calls: stats.calls,
                    errors: stats.errors,
                    divergences: stats.divergences,
                });
            }
        }
        out
    }

    /// Looks at the trials again now (a decision arrived from another replica).
    pub fn wake(&self) {
        if let Some(w) = self.waker() {
            w();
        }
    }

    /// The verdict on a version on trial: its own, or with a board, the shared one.
    fn verdict_of(&self, plugin: &str, digest: &str, trial: &Trial) -> Verdict {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match board {
            Some((board, identity)) => shared_verdict(board.as_ref(), plugin, digest, trial, &identity),
            None => trial.verdict(),
        }
    }

    /// The registry this reloader swaps sets into.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// Re-reads the folder once: checks new and changed components, drops removed ones and swaps
    /// the result in. Returns whether the registry changed. Per-plugin refusals are not errors
    /// (see [`Reloader::status`]); an unreadable folder is.
    pub fn scan(&self) -> Result<bool> {
        let _one_at_a_time = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        let (on_disk, held) = self.list()?;
        let known: BTreeMap<String, (Option<String>, Option<Refusal>)> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots
                .iter()
                .map(|(k, s)| (k.clone(), (s.good.as_ref().map(|(p, _)| p.digest().to_string()), s.refused.clone())))
                .collect()
        };
        let in_shadow: BTreeMap<String, String> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.iter().filter_map(|(k, s)| Some((k.clone(), s.shadow.as_ref()?.0.digest().to_string()))).collect()
        };
        // The versions in use of the files still on disk, as the next commit will see them.
        let in_use: Vec<(&String, &str)> = known
            .iter()
            .filter(|(stem, _)| on_disk.contains_key(*stem))
            .filter_map(|(stem, (good, _))| good.as_deref().map(|d| (stem, d)))
            .collect();

        let mut candidates = Vec::new();
        let mut unreadable = Vec::new();
        let mut reverted = Vec::new();
        for (stem, file) in &on_disk {
            if let Some(why) = held.get(stem) {
                unreadable.push((stem.clone(), file.clone(), why.clone()));
                continue;
            }
            let bytes = match self.read(stem, file) {
                Ok(b) => b,
                Err(e) => {
                    unreadable.push((stem.clone(), file.clone(), e.to_string()));
                    continue;
                }
            };
            let digest = sha256_hex(&bytes);
            let (good, refused) = known.get(stem).cloned().unwrap_or_default();
            let refused_again = refused.is_some_and(|r| {
                r.digest == digest && r.against.as_ref().is_none_or(|a| *a == others(in_use.iter().copied(), stem))
            });
            if good.as_deref() == Some(&digest) && in_shadow.contains_key(stem) {
                // The file holds the version in use again: the shadow it held is withdrawn.
                reverted.push(stem.clone());
                continue;
            }
            if good.as_deref() == Some(&digest) || refused_again || in_shadow.get(stem) == Some(&digest) {
                continue;
            }
            tracing::info!(plugin = %stem, digest = %digest, file = %file.display(), "checking a new plugin version");
            let checked = self.check(stem, &bytes);
            candidates.push(Candidate { stem: stem.clone(), digest, checked });
        }
        let removed: Vec<String> = known.keys().filter(|k| !on_disk.contains_key(*k)).cloned().collect();
        if !reverted.is_empty() {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for stem in &reverted {
                if let Some(slot) = slots.get_mut(stem) {
                    tracing::info!(plugin = %stem, "the file holds the active version again; its shadow is withdrawn");
                    slot.shadow = None;
                    slot.awaiting = false;
                }
            }
            self.publish(&slots);
        }
        if candidates.is_empty() && removed.is_empty() && unreadable.is_empty() {
            return Ok(self.evaluate_locked());
        }
        let committed = self.commit(&on_disk, candidates, &removed, unreadable);
        Ok(self.evaluate_locked() || committed)
    }

    /// Tries the candidates into the set one at a time; refuses (in place) those that cannot
    /// live with the others, and returns what each refusal was against.
    fn refuse_misfits(
        &self,
        slots: &BTreeMap<String, Slot>,
        candidates: &mut [Candidate],
        removed: &[String],
    ) -> BTreeMap<String, String> {
        // The versions in use, by stem, less the removed files.
        let mut base: BTreeMap<String, Plugin> = slots
            .iter()
            .filter(|(stem, _)| !removed.contains(stem))
            .filter_map(|(stem, s)| s.good.as_ref().map(|(p, _)| (stem.clone(), p.clone())))
            .collect();
        // Candidates join one at a time, in file order: one that cannot live with the others
        // (overlap, pin, duplicate name) is refused and its last good version stays. Such a
        // refusal depends on the other plugins, so it is remembered with the versions it was
        // refused against: a scan tries it again only once those change (say, after the plugin
        // it collided with was removed), not on every scan. A version headed for shadow is
        // checked as if it were in use, since it will be once promoted; the set keeps the
        // active one meanwhile.
        let mut set_refusals: BTreeMap<String, String> = BTreeMap::new();
        for c in candidates.iter_mut() {
            let Ok(plugin) = &c.checked else { continue };
            let against = others(base.iter().map(|(s, p)| (s, p.digest())), &c.stem);
            let mut trial = base.clone();
            trial.insert(c.stem.clone(), plugin.clone());
            match PluginSet::new(trial.values().cloned().collect(), &self.config) {
                Ok(_) if !self.to_shadow(slots, &c.stem, plugin) => base = trial,
                Ok(_) => {}
                Err(e) => {
                    set_refusals.insert(c.stem.clone(), against);
                    c.checked = Err(Error::Check {
                        plugin: plugin.name().to_string(),
                        file: format!("{}.wasm", c.stem),
                        digest: c.digest.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        set_refusals
    }

    /// Puts one checked candidate into its slot: in shadow, in use (on trial), or refused.
    fn take_in(&self, slot: &mut Slot, c: Candidate, shadow: bool, now: SystemTime, against: Option<String>) {
        match c.checked {
            Ok(plugin) if shadow => {
                let rollout = self.config.settings(plugin.name()).rollout;
                tracing::info!(
                    plugin = plugin.name(), digest = %c.digest, file = %slot.file.display(),
                    window_calls = rollout.window_calls, window_seconds = rollout.window_seconds,
                    "new plugin version runs in shadow; the active one keeps writing"
                );
                let trial = Trial::new(Stage::Shadow, rollout, self.waker());
                plugin.accept();
                slot.shadow = Some((plugin, trial, now));
                slot.awaiting = false;
                slot.last_error = None;
                slot.refused = None;
                slot.reported = None;
            }
            Ok(plugin) => {
                tracing::info!(plugin = plugin.name(), digest = %c.digest, file = %slot.file.display(), "plugin version loaded");
                let rollout = self.config.settings(plugin.name()).rollout;
                let previous = slot.good.take().map(|(p, _)| p);
                let stage = if previous.is_some() { Stage::Probation } else { Stage::New };
                slot.trial = Some(Trial::new(stage, rollout, self.waker()));
                slot.previous = previous;
                plugin.accept();
                slot.good = Some((plugin, now));
                // A direct swap replaces a shadow too: the file now holds this version.
                slot.shadow = None;
                slot.last_error = None;
                slot.refused = None;
                slot.reported = None;
            }
            Err(e) => {
                if slot.reported.as_deref() == Some(c.digest.as_str()) {
                    tracing::debug!(plugin = %c.stem, digest = %c.digest, error = %e, "plugin version refused again");
                } else {
                    tracing::error!(plugin = %c.stem, digest = %c.digest, file = %slot.file.display(), error = %e, "new plugin version refused; keeping the last good one");
                    self.registry.metrics().record_reload_failure(&c.stem);
                    slot.reported = Some(c.digest.clone());
                }
                slot.last_error = Some(e.to_string());
                slot.refused = Some(Refusal { against, digest: c.digest });
            }
        }
    }

    /// Builds and swaps in the new set; records every outcome in the slots.
    fn commit(
        &self,
        on_disk: &BTreeMap<String, PathBuf>,
        mut candidates: Vec<Candidate>,
        removed: &[String],
        unreadable: Vec<(String, PathBuf, String)>,
    ) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut set_refusals = self.refuse_misfits(&slots, &mut candidates, removed);
        let now = SystemTime::now();
        for c in candidates {
            let file = on_disk.get(&c.stem).cloned().unwrap_or_default();
            let shadow = matches!(&c.checked, Ok(p) if self.to_shadow(&slots, &c.stem, p));
            let slot = slots.entry(c.stem.clone()).or_insert_with(|| Slot::new(file));
            let against = set_refusals.remove(&c.stem);
            self.take_in(slot, c, shadow, now, against);
        }
        for (stem, file, message) in unreadable {
            let again = slots.get(&stem).is_some_and(|s| s.last_error.as_deref() == Some(message.as_str()));
            if again {
                tracing::debug!(plugin = %stem, file = %file.display(), error = %message, "plugin file still unreadable");
            } else {
                tracing::error!(plugin = %stem, file = %file.display(), error = %message, "cannot read plugin file; keeping the last good version");
                self.registry.metrics().record_reload_failure(&stem);
            }
            let slot = slots.entry(stem).or_insert_with(|| Slot::new(file));
            slot.last_error = Some(message);
        }
        for stem in removed {
            tracing::info!(plugin = %stem, "plugin file removed; unloading it");
            slots.remove(stem);
        }
        self.publish(&slots)
    }

    /// Whether a checked new version of `stem` goes to shadow: the plugin is loaded already and
    /// its settings ask for it.
    fn to_shadow(&self, slots: &BTreeMap<String, Slot>, stem: &str, plugin: &Plugin) -> bool {
        self.config.settings(plugin.name()).rollout.mode.shadows() && slots.get(stem).is_some_and(|s| s.good.is_some())
    }

    /// Tells `notifier` of every rollback and promotion from now on.
    pub fn set_notifier(&self, notifier: Notifier) {
        *self.notifier.lock().unwrap_or_else(PoisonError::into_inner) = Some(notifier);
    }

    pub(super) fn notify(&self, plugin: &str, warning: bool, reason: &'static str, message: &str) {
        let notifier = self.notifier.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(n) = notifier {
            n(Notice { plugin: plugin.to_string(), warning, reason, message: message.to_string() });
        }
    }

    fn waker(&self) -> Option<Waker> {
        self.waker.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Builds the set from the slots and swaps it in if it differs from the one in use.
    fn publish(&self, slots: &BTreeMap<String, Slot>) -> bool {
        let members: Vec<Member> = slots
            .values()
            .filter_map(|s| {
                let (plugin, _) = s.good.as_ref()?;
                let shadow = s.shadow.as_ref().map(|(p, t, _)| Shadow { plugin: p.clone(), trial: Arc::clone(t) });
                Some(Member { plugin: plugin.clone(), trial: s.trial.clone(), shadow })
            })
            .collect();
        let set = match PluginSet::from_members(members, &self.config) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "the plugin set cannot be built; keeping the one in use");
                return false;
            }
        };
        let changed = set.identity() != self.registry.snapshot().identity();
        if changed {
            tracing::info!(fingerprint = %set.fingerprint(), "plugin set swapped");
            self.registry.swap(set);
        }
        changed
    }

    /// Acts on the trials: promotes clean shadows (and those an operator promoted with a
    /// `<stem>.promote` file holding the shadow's digest), rolls back failing versions, ends
    /// probations that passed. Returns whether the set changed.
    pub fn evaluate(&self) -> bool {
        let _one_at_a_time = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        self.evaluate_locked()
    }

    fn evaluate_locked(&self) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let metrics = self.registry.metrics();
        let mut dirty = false;
        for (stem, slot) in slots.iter_mut() {
            if let Some((plugin, trial, _)) = &slot.shadow {
                let name = plugin.name().to_string();
                let digest = plugin.digest().to_string();
                let promoted_by_hand = self.promote_marker(stem).is_some_and(|m| digest.starts_with(&m));
                match self.verdict_of(&name, &digest, trial) {
                    Verdict::RollBack(why) => {
                        trial.settle();
                        let message = format!("shadow version {digest} rolled back: {why}");
                        tracing::error!(plugin = %name, digest = %digest, reason = %why, "shadow plugin version rolled back; the active one stays");
                        metrics.record_rollback(&name);
                        self.notify(&name, true, "PluginRolledBack", &format!("plugin {name}: {message}"));
                        slot.last_error = Some(message.clone());
                        slot.last_rollout = Some(message);
                        slot.refused = Some(Refusal { digest, against: None });
                        slot.reported = slot.refused.as_ref().map(|r| r.digest.clone());
                        slot.shadow = None;
                        dirty = true;
                    }
                    Verdict::Pass => {
                        trial.settle();
                        self.promote(slot, &name, "its shadow window closed clean");
                        dirty = true;
                    }
                    _ if promoted_by_hand => {
                        trial.settle();
                        self.promote(slot, &name, "an operator promoted it");
                        dirty = true;
                    }
                    Verdict::AwaitPromotion if !slot.awaiting => {
                        slot.awaiting = true;
                        let stats = trial.stats();
                        tracing::warn!(
                            plugin = %name, digest = %digest, calls = stats.calls, divergences = stats.divergences,
                            errors = stats.errors, last_divergence = trial.last_divergence().unwrap_or_default(),
                            "shadow window closed; the new version needs an operator to promote it (downsync plugin promote)"
                        );
                    }
                    _ => {}
                }
            }
            let Some(trial) = slot.trial.clone() else { continue };
            if trial.is_settled() || trial.stage() != Stage::Probation {
                continue;
            }
            let Some((plugin, _)) = &slot.good else { continue };
            let (name, digest) = (plugin.name().to_string(), plugin.digest().to_string());
            match self.verdict_of(&name, &digest, &trial) {
                Verdict::RollBack(why) => {
                    trial.settle();
                    let Some((bad, _)) = slot.good.take() else { continue };
                    let (name, digest) = (bad.name().to_string(), bad.digest().to_string());
                    let back = slot.previous.take().map(|p| (p, SystemTime::now()));
                    let restored = back.as_ref().map_or_else(String::new, |(p, _)| p.digest().to_string());
                    tracing::error!(plugin = %name, digest = %digest, restored = %restored, reason = %why, "plugin version rolled back; the previous version serves again");
                    metrics.record_rollback(&name);
                    let message = format!("version {digest} rolled back to {restored}: {why}");
                    self.notify(&name, true, "PluginRolledBack", &format!("plugin {name}: {message}"));
                    slot.good = back;
                    slot.trial = None;
                    slot.last_error = Some(message.clone());
                    slot.last_rollout = Some(message);
                    slot.refused = Some(Refusal { digest: digest.clone(), against: None });
                    slot.reported = Some(digest);
                    dirty = true;
                }
                Verdict::Pass | Verdict::AwaitPromotion => {
                    trial.settle();
                    slot.previous = None;
                    tracing::info!(plugin = %stem, "plugin version passed its trial window");
                }
                Verdict::Pending => {}
            }
        }
        dirty && self.publish(&slots)
    }

    /// Makes the shadow the version in use, on probation with the old one kept to roll back to.
    fn promote(&self, slot: &mut Slot, name: &str, why: &str) {
        let Some((plugin, _, _)) = slot.shadow.take() else { return };
        let rollout = self.config.settings(name).rollout;
        tracing::info!(plugin = name, digest = plugin.digest(), reason = why, "shadow plugin version promoted");
        self.registry.metrics().record_promotion(name);
        let message = format!("version {} promoted: {why}", plugin.digest());
        self.notify(name, false, "PluginPromoted", &format!("plugin {name}: {message}"));
        slot.last_rollout = Some(message);
        slot.previous = slot.good.take().map(|(p, _)| p);
        slot.trial = Some(Trial::new(Stage::Probation, rollout, self.waker()));
        slot.good = Some((plugin, SystemTime::now()));
        slot.awaiting = false;
    }

    /// The digest (or prefix) in `<stem>.promote`, if that file exists.
    fn promote_marker(&self, stem: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("{stem}.promote"))).ok()?;
        let digest = text.trim().to_ascii_lowercase();
        // A prefix short enough to match by accident is not an operator's decision.
        (digest.len() >= 12).then_some(digest)
    }

    /// When the next open trial window closes by time, if any.
    pub(super) fn next_deadline(&self) -> Option<std::time::Instant> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .values()
            .flat_map(|s| {
                let shadow = s.shadow.as_ref().map(|(_, t, _)| t).filter(|t| !t.is_settled());
                let probation = s.trial.as_ref().filter(|t| !t.is_settled() && t.stage() == Stage::Probation);
                shadow.into_iter().chain(probation)
            })
            .map(|t| t.deadline())
            .min()
    }
}
