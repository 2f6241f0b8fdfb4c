//! One rollout verdict for every replica, on the Leases: each replica puts the counts of its
//! versions on trial on its member Lease; the holder of shard 0 decides each trial from the
//! counts of all and puts its decisions on the shard-0 Lease; every replica follows those.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use tracing::{info, warn};

use super::gate::{ShardGate, lock};
use crate::plugin::{TrialCounts, TrialDecision, VerdictBoard};

/// The annotation of a member Lease holding its replica's trial counts (JSON).
pub const TRIALS_ANNOTATION: &str = "downsync.dev/trials";
/// The annotation of the shard-0 Lease holding the decisions (JSON).
pub const VERDICTS_ANNOTATION: &str = "downsync.dev/verdicts";
/// Decisions kept on the Lease: the latest ones, well under an annotation's size limit.
const MAX_DECISIONS: usize = 64;

/// What produces this replica's trial counts, and what looks at the trials again.
type Counts = Box<dyn Fn() -> Vec<TrialCounts> + Send + Sync>;
type Wake = Box<dyn Fn() + Send + Sync>;

fn key(plugin: &str, digest: &str, stage: &str) -> String {
    format!("{plugin}@{digest}/{stage}")
}

/// The board the plugin reloader reads and the Lease loop fills.
#[derive(Default)]
pub struct SharedVerdicts {
    gate: Option<Arc<ShardGate>>,
    counts: Mutex<Option<Counts>>,
    wake: Mutex<Option<Wake>>,
    /// The other replicas' counts, by identity.
    others: Mutex<BTreeMap<String, Vec<TrialCounts>>>,
    /// Every decision known, recorded here or read from the shard-0 Lease, in order.
    decided: Mutex<Vec<TrialDecision>>,
}

impl std::fmt::Debug for SharedVerdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedVerdicts").field("decided", &*lock(&self.decided)).finish_non_exhaustive()
    }
}

impl SharedVerdicts {
    /// A board for a replica writing through `gate` (it decides while it holds shard 0).
    pub fn new(gate: Arc<ShardGate>) -> Self {
        Self { gate: Some(gate), ..Self::default() }
    }

    /// Connects the plugin reloader: where this replica's counts come from, and how it is told
    /// to look at its trials again.
    pub fn connect(&self, counts: Counts, wake: Wake) {
        *lock(&self.counts) = Some(counts);
        *lock(&self.wake) = Some(wake);
    }

    /// This replica's counts, as the member Lease annotation (`None`: nothing on trial).
    pub(super) fn counts_annotation(&self) -> Option<String> {
        let counts = lock(&self.counts).as_ref().map(|f| f()).unwrap_or_default();
        if counts.is_empty() {
            return None;
        }
        serde_json::to_string(&counts).ok()
    }

    /// The decisions, as the shard-0 Lease annotation (`None`: none yet).
    pub(super) fn decisions_annotation(&self) -> Option<String> {
        let decided = lock(&self.decided);
        if decided.is_empty() {
            return None;
        }
        serde_json::to_string(&*decided).ok()
    }

    /// Takes in what the Leases of one round say: the other replicas' counts from their member
    /// Leases, the decisions from the shard-0 Lease. New decisions wake the reloader.
    pub(super) fn observe(&self, leases: &[&Lease], own_member: &str, shard_zero: &str) {
        let mut others = BTreeMap::new();
        let mut fresh = false;
        for lease in leases {
            let annotations = lease.annotations();
            let name = lease.name_any();
            if name == shard_zero
                && let Some(text) = annotations.get(VERDICTS_ANNOTATION)
            {
                match serde_json::from_str::<Vec<TrialDecision>>(text) {
                    Ok(read) => fresh |= self.merge(read),
                    Err(e) => warn!(lease = %name, error = %e, "unreadable rollout decisions on the Lease; ignored"),
                }
            }
            if name != own_member
                && let Some(text) = annotations.get(TRIALS_ANNOTATION)
            {
                match serde_json::from_str::<Vec<TrialCounts>>(text) {
                    Ok(counts) => {
                        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or(name);
                        others.insert(holder, counts);
                    }
                    Err(e) => warn!(lease = %name, error = %e, "unreadable trial counts on the Lease; ignored"),
                }
            }
        }
        // The decider looks again when the others' counts move (its own calls alone may never
        // close a window); a follower when a decision arrives.
        let moved = std::mem::replace(&mut *lock(&self.others), others.clone()) != others;
        if (fresh || (moved && self.decides()))
            && let Some(wake) = lock(&self.wake).as_ref()
        {
            wake();
        }
    }

    /// Adds decisions not known yet; whether there were any.
    fn merge(&self, read: Vec<TrialDecision>) -> bool {
        let mut decided = lock(&self.decided);
        let mut fresh = false;
        for d in read {
            let k = key(&d.plugin, &d.digest, &d.stage);
            if !decided.iter().any(|e| key(&e.plugin, &e.digest, &e.stage) == k) {
                info!(plugin = %d.plugin, digest = %d.digest, stage = %d.stage, passed = d.passed, by = %d.by,
                    "following the rollout decision of the replica that decides");
                decided.push(d);
                fresh = true;
            }
        }
        let excess = decided.len().saturating_sub(MAX_DECISIONS);
        decided.drain(..excess);
        fresh
    }
}

impl VerdictBoard for SharedVerdicts {
    fn decides(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.holds(0))
    }

    fn others(&self, plugin: &str, digest: &str, stage: &str) -> crate::plugin::Stats {
        let mut sum = crate::plugin::Stats::default();
        for c in lock(&self.others).values().flatten() {
            if c.plugin == plugin && c.digest == digest && c.stage == stage {
                sum.calls += c.calls;
                sum.errors += c.errors;
                sum.divergences += c.divergences;
            }
        }
        sum
    }

    fn record(&self, decision: TrialDecision) {
        info!(plugin = %decision.plugin, digest = %decision.digest, stage = %decision.stage, passed = decision.passed,
            reason = %decision.reason, "rollout decided for every replica");
        let mut decided = lock(&self.decided);
        decided.push(decision);
        let excess = decided.len().saturating_sub(MAX_DECISIONS);
        decided.drain(..excess);
    }

    fn decided(&self, plugin: &str, digest: &str, stage: &str) -> Option<TrialDecision> {
        let k = key(plugin, digest, stage);
        lock(&self.decided).iter().rev().find(|d| key(&d.plugin, &d.digest, &d.stage) == k).cloned()
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn mk_lease(name: &str, annotation: (&str, String)) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some([(annotation.0.to_string(), annotation.1)].into()),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    fn mk_counts(calls: u64, errors: u64) -> TrialCounts {
        TrialCounts { plugin: "p".into(), digest: "d".into(), stage: "shadow".into(), calls, errors, divergences: 0 }
    }

    #[test]
    fn the_others_counts_are_summed_and_our_own_member_lease_is_not_counted_twice() {
        let board = SharedVerdicts::new(Arc::new(ShardGate::sharded(2)));
        let a = mk_lease("m-a", (TRIALS_ANNOTATION, serde_json::to_string(&[mk_counts(3, 1)]).unwrap()));
        let b = mk_lease("m-b", (TRIALS_ANNOTATION, serde_json::to_string(&[mk_counts(4, 0)]).unwrap()));
        let own = mk_lease("m-own", (TRIALS_ANNOTATION, serde_json::to_string(&[mk_counts(100, 0)]).unwrap()));
        board.observe(&[&a, &b, &own], "m-own", "shard-0");
        let sum = board.others("p", "d", "shadow");
        assert_eq!((sum.calls, sum.errors), (7, 1));
        assert_eq!(board.others("p", "d", "probation").calls, 0);
        assert!(!board.decides(), "shard 0 not held");
    }

    #[test]
    fn decisions_on_the_shard_zero_lease_are_followed_once_and_wake_the_reloader() {
        let board = SharedVerdicts::new(Arc::new(ShardGate::sharded(2)));
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        board.connect(
            Box::new(Vec::new),
            Box::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let d = TrialDecision {
            plugin: "p".into(),
            digest: "d".into(),
            stage: "shadow".into(),
            passed: false,
            reason: "5 of 5 calls failed".into(),
            by: "r0".into(),
        };
        let zero = mk_lease("shard-0", (VERDICTS_ANNOTATION, serde_json::to_string(std::slice::from_ref(&d)).unwrap()));
        board.observe(&[&zero], "m-own", "shard-0");
        board.observe(&[&zero], "m-own", "shard-0");
        assert_eq!(board.decided("p", "d", "shadow"), Some(d));
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1, "woken once, for the new decision");
        assert!(board.decisions_annotation().is_some_and(|a| a.contains("5 of 5 calls failed")));
        assert_eq!(board.counts_annotation(), None, "nothing on trial here");
    }
}
