//! The shard gate: which shards this process may write now, entered by every write and
//! drained before a shard's Lease is given up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, RwLockReadGuard, watch};
use tracing::warn;

use super::config::shard_of;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values replaced in single assignments: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Slot {
    /// Writes are allowed until this instant: the last successful renewal's start plus the
    /// renew deadline. None: not held. Checked by the workers themselves, so writing stops at
    /// the deadline even when the Lease loop is stuck in a request.
    valid_until: Mutex<Option<Instant>>,
    /// Reconciles of this shard hold it for reading; a release takes it for writing, so it
    /// waits for the syncs in flight before the Lease is let go.
    in_flight: RwLock<()>,
    /// Counts the times this shard became writable; a key skipped while it was not must be
    /// looked at again, even if the shard was lost and regained between two looks.
    epoch: std::sync::atomic::AtomicU64,
}

/// Which shards this replica may write now. Without HA it holds the one shard forever.
pub struct ShardGate {
    shards: u32,
    always: bool,
    slots: Vec<Slot>,
    held: watch::Sender<BTreeMap<u32, u64>>,
}

impl std::fmt::Debug for ShardGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGate").field("shards", &self.shards).field("held", &*self.held.borrow()).finish()
    }
}

/// Proof that a shard is held, kept for the length of one reconcile.
pub type Entered<'a> = Option<RwLockReadGuard<'a, ()>>;

impl ShardGate {
    /// The gate of a single process: one shard, always held.
    pub fn single() -> Self {
        let (held, _) = watch::channel(BTreeMap::from([(0, 0)]));
        Self { shards: 1, always: true, slots: Vec::new(), held }
    }

    /// The gate of an HA replica: `shards` shards, none held yet.
    pub fn sharded(shards: u32) -> Self {
        let slots = (0..shards.max(1))
            .map(|_| Slot { valid_until: Mutex::new(None), in_flight: RwLock::new(()), epoch: Default::default() })
            .collect();
        let (held, _) = watch::channel(BTreeMap::new());
        Self { shards: shards.max(1), always: false, slots, held }
    }

    /// The number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an upstream namespace.
    pub fn shard_of(&self, namespace: Option<&str>) -> u32 {
        shard_of(namespace, self.shards)
    }

    /// Whether this replica may write shard `i` now.
    pub fn holds(&self, i: u32) -> bool {
        if self.always {
            return true;
        }
        self.slots.get(i as usize).is_some_and(|s| lock(&s.valid_until).is_some_and(|t| Instant::now() < t))
    }

    /// Enters shard `i` for one reconcile: `None` when it is not held (the key is skipped; the
    /// holder syncs it). A held guard delays a release of the shard until the reconcile ends.
    pub async fn enter(&self, i: u32) -> Option<Entered<'_>> {
        if self.always {
            return Some(None);
        }
        if !self.holds(i) {
            return None;
        }
        let guard = self.slots.get(i as usize)?.in_flight.read().await;
        // A release may have come while we waited for the lock.
        self.holds(i).then_some(Some(guard))
    }

    /// The shards held now.
    pub fn held(&self) -> BTreeSet<u32> {
        (0..self.shards).filter(|&i| self.holds(i)).collect()
    }

    /// The held shards with the number of times each became writable, for queueing a shard's
    /// objects whenever it is (re)gained.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<u32, u64>> {
        self.held.subscribe()
    }

    pub(super) fn set_valid_until(&self, i: u32, until: Option<Instant>) {
        let was = self.holds(i);
        if let Some(s) = self.slots.get(i as usize) {
            *lock(&s.valid_until) = until;
            if until.is_some() && !was {
                s.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    pub(super) fn publish(&self) {
        let now: BTreeMap<u32, u64> = self
            .held()
            .into_iter()
            .map(|i| {
                let epoch =
                    self.slots.get(i as usize).map_or(0, |s| s.epoch.load(std::sync::atomic::Ordering::Acquire));
                (i, epoch)
            })
            .collect();
        self.held.send_if_modified(|h| {
            let changed = *h != now;
            *h = now;
            changed
        });
    }

    /// Waits for the reconciles of shard `i` in flight, up to `limit`.
    pub(super) async fn drain(&self, i: u32, limit: Duration) {
        if let Some(s) = self.slots.get(i as usize)
            && tokio::time::timeout(limit, s.in_flight.write()).await.is_err()
        {
            warn!(shard = i, "syncs of a released shard still running after the wait; releasing anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    #[tokio::test]
    async fn a_single_process_holds_everything_and_a_replica_nothing_until_it_acquires() {
        let single = ShardGate::single();
        assert!(single.enter(0).await.is_some());
        let gate = ShardGate::sharded(4);
        assert!(gate.enter(2).await.is_none());
        gate.set_valid_until(2, Some(Instant::now() + Duration::from_secs(60)));
        assert!(gate.enter(2).await.is_some());
        assert_eq!(gate.held(), BTreeSet::from([2]));
    }

    #[tokio::test]
    async fn a_holder_stops_writing_at_its_renew_deadline_without_the_lease_loop() {
        let gate = ShardGate::sharded(2);
        gate.set_valid_until(1, Some(Instant::now() + Duration::from_millis(50)));
        assert!(gate.holds(1));
        // Nobody touches the gate: the deadline alone ends the right to write.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!gate.holds(1));
        assert!(gate.enter(1).await.is_none());
    }

    #[test]
    pub(super) fn a_shard_lost_and_regained_between_two_looks_is_seen_as_gained_again() {
        let gate = ShardGate::sharded(1);
        let rx = gate.subscribe();
        let later = Instant::now() + Duration::from_secs(60);
        gate.set_valid_until(0, Some(later));
        gate.publish();
        let first = rx.borrow().clone();
        // Lost (renew deadline) and regained before the controller looked: a new epoch.
        gate.set_valid_until(0, None);
        gate.set_valid_until(0, Some(later));
        gate.publish();
        assert_ne!(*rx.borrow(), first);
        // A renewal is not a regain.
        let second = rx.borrow().clone();
        gate.set_valid_until(0, Some(later + Duration::from_secs(1)));
        gate.publish();
        assert_eq!(*rx.borrow(), second);
    }

    #[tokio::test]
    async fn a_release_waits_for_the_sync_in_flight() {
        let gate = Arc::new(ShardGate::sharded(1));
        gate.set_valid_until(0, Some(Instant::now() + Duration::from_secs(60)));
        let guard = gate.enter(0).await.unwrap();
        gate.set_valid_until(0, None);
        let g = Arc::clone(&gate);
        let drain = tokio::spawn(async move { g.drain(0, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drain.is_finished(), "the release must wait for the reconcile holding the shard");
        drop(guard);
        drain.await.unwrap();
        assert!(gate.enter(0).await.is_none());
    }
}
