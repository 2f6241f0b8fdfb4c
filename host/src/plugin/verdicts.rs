//! One verdict for many replicas: in HA, one replica decides each trial (shadow or probation)
//! from the calls every replica made, records the decision where all of them read it, and the
//! others follow it instead of deciding alone.

use serde::{Deserialize, Serialize};

use super::rollout::{Stage, Stats, Verdict, verdict};

/// The counts of one version on trial in one replica, as shared with the decider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialCounts {
    /// The plugin's name.
    pub plugin: String,
    /// sha256 of the version on trial.
    pub digest: String,
    /// `shadow` or `probation`.
    pub stage: String,
    /// Calls of the version.
    pub calls: u64,
    /// Of those, the failed ones.
    pub errors: u64,
    /// Shadow calls whose result differed from the active version's.
    pub divergences: u64,
}

/// What the deciding replica concluded about one version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialDecision {
    /// The plugin's name.
    pub plugin: String,
    /// sha256 of the version decided on.
    pub digest: String,
    /// `shadow` or `probation`.
    pub stage: String,
    /// Whether the version passed (a shadow is promoted, a probation ends) or is rolled back.
    pub passed: bool,
    /// Why, in words.
    pub reason: String,
    /// The replica that decided.
    pub by: String,
}

/// Where replicas share trial counts and decisions (the HA Leases). Without one, every process
/// decides for itself.
pub trait VerdictBoard: Send + Sync {
    /// Whether this replica decides (in HA: it holds shard 0).
    fn decides(&self) -> bool;
    /// The other replicas' counts of one version on trial, summed.
    fn others(&self, plugin: &str, digest: &str, stage: &str) -> Stats;
    /// Records a decision this replica reached, for the others to follow.
    fn record(&self, decision: TrialDecision);
    /// The decision recorded for one version on trial, if there is one.
    fn decided(&self, plugin: &str, digest: &str, stage: &str) -> Option<TrialDecision>;
}

/// The name of a trial's stage on the board (`None`: not decided there, a brand-new plugin).
pub(super) fn stage_name(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Shadow => Some("shadow"),
        Stage::Probation => Some("probation"),
        Stage::New => None,
    }
}

/// The verdict on one version on trial with a board: a decision already recorded is
/// followed; else the decider decides from every replica's calls and records what it
/// concluded, and any other replica waits for it.
pub(super) fn shared_verdict(
    board: &dyn VerdictBoard,
    plugin: &str,
    digest: &str,
    trial: &super::rollout::Trial,
    identity: &str,
) -> Verdict {
    let Some(stage) = stage_name(trial.stage()) else { return trial.verdict() };
    if let Some(d) = board.decided(plugin, digest, stage) {
        return if d.passed { Verdict::Pass } else { Verdict::RollBack(format!("{} (decided by {})", d.reason, d.by)) };
    }
    if !board.decides() {
        return Verdict::Pending;
    }
    let (mine, others) = (trial.stats(), board.others(plugin, digest, stage));
    let all = Stats {
        calls: mine.calls + others.calls,
        errors: mine.errors + others.errors,
        divergences: mine.divergences + others.divergences,
        fuel: mine.fuel + others.fuel,
    };
    let v = verdict(trial.stage(), trial.settings(), all, trial.elapsed());
    let decision = |passed: bool, reason: String| TrialDecision {
        plugin: plugin.into(),
        digest: digest.into(),
        stage: stage.into(),
        passed,
        reason,
        by: identity.into(),
    };
    match &v {
        Verdict::Pass => board.record(decision(true, format!("{} calls on every replica, clean", all.calls))),
        Verdict::RollBack(why) => board.record(decision(false, why.clone())),
        Verdict::Pending | Verdict::AwaitPromotion => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::plugin::rollout::{RolloutSettings, Trial};

    #[derive(Default)]
    struct MkBoard {
        decides: bool,
        others: Stats,
        recorded: Mutex<BTreeMap<String, TrialDecision>>,
    }

    impl VerdictBoard for MkBoard {
        fn decides(&self) -> bool {
            self.decides
        }
        fn others(&self, _: &str, _: &str, _: &str) -> Stats {
            self.others
        }
        fn record(&self, d: TrialDecision) {
            self.recorded.lock().unwrap().insert(format!("{}@{}/{}", d.plugin, d.digest, d.stage), d);
        }
        fn decided(&self, plugin: &str, digest: &str, stage: &str) -> Option<TrialDecision> {
            self.recorded.lock().unwrap().get(&format!("{plugin}@{digest}/{stage}")).cloned()
        }
    }

    fn mk_trial(stage: Stage, calls: u64, errors: u64) -> std::sync::Arc<Trial> {
        let t = Trial::new(stage, RolloutSettings { window_calls: 10, ..RolloutSettings::default() }, None);
        for i in 0..calls {
            t.record(i < errors, 1);
        }
        t
    }

    #[test]
    fn the_decider_counts_every_replica_and_records_what_it_decides() {
        let board = MkBoard { decides: true, others: Stats { calls: 7, ..Stats::default() }, ..MkBoard::default() };
        // 3 calls here, 7 elsewhere: the window of 10 calls is closed, clean.
        let v = shared_verdict(&board, "p", "d1", &mk_trial(Stage::Shadow, 3, 0), "r0");
        assert_eq!(v, Verdict::Pass);
        let d = board.decided("p", "d1", "shadow").expect("recorded");
        assert!(d.passed && d.by == "r0", "{d:?}");
    }

    #[test]
    fn a_follower_waits_for_the_decision_then_follows_it() {
        let board = MkBoard::default();
        let failing = mk_trial(Stage::Probation, 10, 10);
        assert_eq!(shared_verdict(&board, "p", "d2", &failing, "r1"), Verdict::Pending, "never alone");
        board.record(TrialDecision {
            plugin: "p".into(),
            digest: "d2".into(),
            stage: "probation".into(),
            passed: false,
            reason: "6 of 6 calls failed".into(),
            by: "r0".into(),
        });
        let v = shared_verdict(&board, "p", "d2", &mk_trial(Stage::Probation, 0, 0), "r1");
        assert!(matches!(&v, Verdict::RollBack(why) if why.contains("decided by r0")), "{v:?}");
        // A decision for the shadow stage does not decide the probation of the same digest.
        assert_eq!(shared_verdict(&board, "p", "d2", &mk_trial(Stage::Shadow, 0, 0), "r1"), Verdict::Pending);
    }

    #[test]
    fn a_brand_new_plugin_is_not_decided_on_the_board() {
        let board = MkBoard::default();
        let t = mk_trial(Stage::New, 10, 0);
        assert_eq!(shared_verdict(&board, "p", "d3", &t, "r1"), t.verdict());
        assert!(board.recorded.lock().unwrap().is_empty());
    }
}
