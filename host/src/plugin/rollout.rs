//! Safe rollout of a new plugin version: the shadow window, promotion, and automatic rollback.
//!
//! A new version of a loaded plugin either runs in *shadow* first (both versions run on every
//! matching call, the active one's result is used, the two are compared) or is swapped in at
//! once; either way it is on *trial* for a window of calls or seconds. Its counts live in a
//! [`Trial`] shared by the call path (which only adds to atomics) and the reloader (which reads
//! them and decides, with the pure [`verdict`]). A trial holds no per-object state, so its memory
//! is fixed whatever the traffic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::types::Decision;
use crate::sync::differ::{Delta, delta};

/// How a new version of a loaded plugin takes over (`plugins.<name>.rollout.mode`): one
/// setting for what were two (`shadow` and `promote`), whose fourth combination (no shadow,
/// manual promotion) meant nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RolloutMode {
    /// At once, on trial: rolled back by itself when too many of its calls fail in its window.
    #[default]
    Direct,
    /// In shadow first (both versions run, the active one's result is written, the two are
    /// compared); it takes over by itself after a window with no divergence and no failure.
    Shadow,
    /// In shadow until an operator promotes it: `downsync plugin promote FILE`, or a
    /// `<file stem>.promote` file next to the component.
    Manual,
}

impl RolloutMode {
    /// Whether a new version runs in shadow first.
    pub fn shadows(self) -> bool {
        self != Self::Direct
    }
}

impl std::fmt::Display for RolloutMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Shadow => "shadow",
            Self::Manual => "manual",
        })
    }
}

/// How new versions of one plugin are rolled out (`plugins.<name>.rollout` in the config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSettings {
    /// How a new version of a loaded plugin takes over: `direct` (at once, on trial), `shadow`
    /// (in shadow first, then by itself after a clean window) or `manual` (in shadow until
    /// `downsync plugin promote`).
    pub mode: RolloutMode,
    /// The trial window ends after this many calls of the new version, or after 5 minutes with
    /// at least one call, whichever comes first. Not a setting: 100, enough calls for the error
    /// share to mean something and few enough that a busy kind decides within seconds; tests
    /// shorten it with the hidden `--trial-window-calls`.
    #[serde(skip)]
    pub window_calls: u64,
    /// The trial window's time bound, in seconds. Not a setting: 300, a backstop for a quiet
    /// kind; the calls are what the verdict counts (a window without calls stays open).
    #[serde(skip)]
    pub window_seconds: u64,
    /// Take a new version out when too many of its calls fail during its window (always, for
    /// users).
    #[serde(skip)]
    pub rollback: bool,
    /// The share of failed calls (0–100) above which a version on trial is rolled back.
    #[serde(skip)]
    pub max_error_percent: u8,
    /// Calls needed before the error share counts: one early failure is not a verdict. For
    /// users 5, or the window's calls when the window is shorter (see [`RolloutSettings::min_calls`]).
    #[serde(skip)]
    pub min_calls: u64,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            mode: RolloutMode::Direct,
            window_calls: 100,
            window_seconds: 300,
            rollback: true,
            max_error_percent: 50,
            min_calls: 5,
        }
    }
}

impl RolloutSettings {
    /// Calls needed before the error share counts: `min_calls`, but never more than the window.
    pub fn min_calls(&self) -> u64 {
        self.min_calls.min(self.window_calls.max(1))
    }

    /// Whether a version with these counts fails: enough calls, and more of them failed than
    /// the share allows.
    pub fn failing(&self, stats: &Stats) -> bool {
        stats.calls >= self.min_calls() && stats.errors * 100 > u64::from(self.max_error_percent.min(100)) * stats.calls
    }

    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }
}

/// What a trial is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Runs beside the active version; its results are compared, never used.
    Shadow,
    /// In use, with the earlier version kept to roll back to.
    Probation,
    /// In use, with no earlier version (a brand-new plugin): it cannot be rolled back.
    New,
}

/// The counts of one trial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Calls of the version on trial.
    pub calls: u64,
    /// Of those, the failed ones (trap, fuel, deadline, memory, contract, rejected).
    pub errors: u64,
    /// Shadow calls whose result differed from the active version's.
    pub divergences: u64,
    /// Fuel the version on trial burnt.
    pub fuel: u64,
}

/// What the reloader should do with a version on trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The window is still open.
    Pending,
    /// The window closed clean: a shadow is promoted, a probation ends.
    Pass,
    /// The window closed with divergences and the policy is manual (or the divergences need
    /// an operator): the shadow keeps running until promoted or replaced.
    AwaitPromotion,
    /// Too many failed calls: take the version out.
    RollBack(String),
}

/// Decides a trial from its counts: pure, so the policy is table-tested.
pub(super) fn verdict(stage: Stage, settings: &RolloutSettings, stats: Stats, elapsed: Duration) -> Verdict {
    // A window with no calls says nothing about the version: it stays open however long.
    let closed = stats.calls >= settings.window_calls || (elapsed >= settings.window() && stats.calls > 0);
    // Below `min_calls`, a version whose every call failed is failing once its window closes.
    let failing = settings.failing(&stats) || (closed && stats.errors == stats.calls);
    if failing && settings.rollback && stage != Stage::New {
        return Verdict::RollBack(format!(
            "{} of {} calls failed (over {}%) within its trial window",
            stats.errors, stats.calls, settings.max_error_percent
        ));
    }
    if !closed {
        return Verdict::Pending;
    }
    match stage {
        Stage::Shadow if stats.divergences > 0 || stats.errors > 0 || settings.mode == RolloutMode::Manual => {
            Verdict::AwaitPromotion
        }
        _ => Verdict::Pass,
    }
}

/// Wakes the reloader when a trial may have reached a verdict.
pub(super) type Waker = Arc<dyn Fn() + Send + Sync>;

/// The live counts of one version on trial; the call path adds, the reloader decides.
pub struct Trial {
    stage: Stage,
    settings: RolloutSettings,
    started: Instant,
    calls: AtomicU64,
    errors: AtomicU64,
    divergences: AtomicU64,
    fuel: AtomicU64,
    /// Once decided, calls still count but no longer wake anyone.
    settled: AtomicBool,
    /// The reloader was woken for the window's close.
    closed: AtomicBool,
    /// The last divergence: object and paths (never values).
    last_divergence: Mutex<Option<String>>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trial").field("stage", &self.stage).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Trial {
    /// A trial starting now.
    pub fn new(stage: Stage, settings: RolloutSettings, waker: Option<Waker>) -> Arc<Self> {
        Arc::new(Self {
            stage,
            settings,
            started: Instant::now(),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            divergences: AtomicU64::new(0),
            fuel: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_divergence: Mutex::new(None),
            waker,
        })
    }

    /// What the trial is about.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Its settings.
    pub fn settings(&self) -> &RolloutSettings {
        &self.settings
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        Stats {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            divergences: self.divergences.load(Ordering::Relaxed),
            fuel: self.fuel.load(Ordering::Relaxed),
        }
    }

    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the window closes by time.
    pub fn deadline(&self) -> Instant {
        self.started + self.settings.window()
    }

    /// The verdict now.
    pub fn verdict(&self) -> Verdict {
        verdict(self.stage, &self.settings, self.stats(), self.elapsed())
    }

    /// Whether a verdict was acted on.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Marks the verdict acted on.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// The last divergence seen, as `object: paths`.
    pub fn last_divergence(&self) -> Option<String> {
        self.last_divergence.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Counts one call of the version on trial.
    pub fn record(&self, failed: bool, fuel: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_wake();
    }

    /// Counts one divergence, keeping the object and paths of the latest.
    pub fn record_divergence(&self, object: &str, what: &str) {
        let n = self.divergences.fetch_add(1, Ordering::Relaxed) + 1;
        *self.last_divergence.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{object}: {what}"));
        // The first few are logged; after that the count and the latest say enough.
        if n <= 5 {
            tracing::info!(object, divergence = what, count = n, "shadow plugin version diverges from the active one");
        }
    }

    fn maybe_wake(&self) {
        if self.is_settled() || self.stage == Stage::New {
            return;
        }
        let Some(w) = &self.waker else { return };
        match self.verdict() {
            Verdict::Pending => {}
            // Acted on at once, and settled: this wakes once or twice, not per call.
            Verdict::RollBack(_) => w(),
            // A closed window is reported once; a shadow waiting for an operator keeps running.
            Verdict::Pass | Verdict::AwaitPromotion => {
                if !self.closed.swap(true, Ordering::AcqRel) {
                    w();
                }
            }
        }
    }
}

/// Compares the two versions' results of one call; `None` when they agree. Names paths and
/// error classes, never values.
pub(super) fn compare_values(active: Result<&Value, &str>, shadow: Result<&Value, &str>) -> Option<String> {
    match (active, shadow) {
        (Ok(a), Ok(b)) => describe(&delta(a, b)),
        (Ok(_), Err(e)) => Some(format!("shadow failed where the active version did not: {e}")),
        (Err(_), Ok(_)) => Some("shadow succeeded where the active version failed".into()),
        (Err(_), Err(_)) => None,
    }
}

/// Compares two `preserve` decisions; `None` when they agree.
pub(super) fn compare_decisions(active: Result<&Decision, &str>, shadow: Result<&Decision, &str>) -> Option<String> {
    match (active, shadow) {
        (Ok(Decision::Apply(a)), Ok(Decision::Apply(b))) => describe(&delta(a, b)),
        (Ok(a), Ok(b)) if std::mem::discriminant(a) == std::mem::discriminant(b) => None,
        (Ok(a), Ok(b)) => Some(format!("decision {} instead of {}", decision_name(b), decision_name(a))),
        (Ok(_), Err(e)) => Some(format!("shadow failed where the active version did not: {e}")),
        (Err(_), Ok(_)) => Some("shadow succeeded where the active version failed".into()),
        (Err(_), Err(_)) => None,
    }
}

/// The name of a decision, for reports.
pub(super) fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Apply(_) => "apply",
        Decision::Recreate(_) => "recreate",
        Decision::Skip(_) => "skip",
    }
}

fn describe(d: &Delta) -> Option<String> {
    if d.is_empty() {
        return None;
    }
    let more = if d.truncated { ", ..." } else { "" };
    Some(format!("fields differ: {}{more}", d.paths.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_stats(calls: u64, errors: u64, divergences: u64) -> Stats {
        Stats { calls, errors, divergences, fuel: 0 }
    }

    #[test]
    fn verdict_table() {
        let s = RolloutSettings { window_calls: 10, window_seconds: 60, ..RolloutSettings::default() };
        let manual = RolloutSettings { mode: RolloutMode::Manual, ..s.clone() };
        let no_rollback = RolloutSettings { rollback: false, ..s.clone() };
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(61);
        let rolled = |v: &Verdict| matches!(v, Verdict::RollBack(_));
        type Case<'a> = (Stage, &'a RolloutSettings, Stats, Duration, fn(&Verdict) -> bool, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (Stage::Shadow, &s, mk_stats(3, 0, 0), early, |v| *v == Verdict::Pending, "window open"),
            (Stage::Shadow, &s, mk_stats(10, 0, 0), early, |v| *v == Verdict::Pass, "clean by calls"),
            (Stage::Shadow, &s, mk_stats(3, 0, 0), late, |v| *v == Verdict::Pass, "clean by time"),
            (
                Stage::Shadow,
                &s,
                mk_stats(0, 0, 0),
                late,
                |v| *v == Verdict::Pending,
                "no calls: never promoted by time",
            ),
            (Stage::Probation, &s, mk_stats(2, 2, 0), early, |v| *v == Verdict::Pending, "few calls, window open"),
            (Stage::Probation, &s, mk_stats(2, 2, 0), late, rolled, "every call failed when the window closes"),
            (Stage::Shadow, &s, mk_stats(10, 0, 1), early, |v| *v == Verdict::AwaitPromotion, "divergent"),
            (Stage::Shadow, &manual, mk_stats(10, 0, 0), early, |v| *v == Verdict::AwaitPromotion, "manual"),
            (Stage::Shadow, &s, mk_stats(5, 5, 0), early, rolled, "shadow failing"),
            (Stage::Shadow, &s, mk_stats(4, 4, 0), early, |v| *v == Verdict::Pending, "too few calls"),
            (Stage::Shadow, &s, mk_stats(10, 5, 0), early, |v| *v == Verdict::AwaitPromotion, "50% is not over"),
            (Stage::Probation, &s, mk_stats(6, 4, 0), early, rolled, "promoted and failing"),
            (Stage::Probation, &s, mk_stats(10, 1, 0), early, |v| *v == Verdict::Pass, "one failure"),
            (Stage::Probation, &no_rollback, mk_stats(6, 6, 0), early, |v| *v == Verdict::Pending, "rollback off"),
            (Stage::New, &s, mk_stats(6, 6, 0), early, |v| *v == Verdict::Pending, "nothing to roll back to"),
        ];
        for (stage, settings, stats, elapsed, ok, name) in cases {
            let v = verdict(stage, settings, stats, elapsed);
            assert!(ok(&v), "{name}: {v:?}");
        }
    }

    #[test]
    fn a_trial_wakes_the_reloader_once_it_has_a_verdict() {
        let woken = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&woken);
        let settings = RolloutSettings { window_calls: 3, ..RolloutSettings::default() };
        let t = Trial::new(Stage::Shadow, settings, Some(Arc::new(move || _ = w.fetch_add(1, Ordering::Relaxed))));
        t.record(false, 10);
        t.record(false, 10);
        assert_eq!(woken.load(Ordering::Relaxed), 0);
        t.record(false, 10);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        t.settle();
        t.record(false, 10);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(t.stats(), Stats { calls: 4, errors: 0, divergences: 0, fuel: 40 });
    }

    #[test]
    fn comparisons_name_paths_and_classes_never_values() {
        let a = json!({"data": {"password": "hunter2"}});
        let b = json!({"data": {"password": "swordfish"}});
        let d = compare_values(Ok(&a), Ok(&b)).unwrap();
        assert!(d.contains("/data/password") && !d.contains("hunter2") && !d.contains("swordfish"), "{d}");
        assert_eq!(compare_values(Ok(&a), Ok(&a)), None);
        assert!(compare_values(Ok(&a), Err("out of fuel")).unwrap().contains("out of fuel"));
        let apply = Decision::Apply(json!({}));
        let skip = Decision::Skip("no".into());
        assert_eq!(compare_decisions(Ok(&apply), Ok(&skip)).as_deref(), Some("decision skip instead of apply"));
        assert_eq!(compare_decisions(Ok(&skip), Ok(&Decision::Skip("other reason".into()))), None);
    }
}
