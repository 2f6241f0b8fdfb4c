//! The work queue: keys to reconcile, duplicates collapsed, one worker per key at a time,
//! delayed and rate-limited re-adds, and a shutdown that lets in-flight work finish.
//!
//! This is client-go's `workqueue` semantics. kube-runtime's `Controller` has a scheduler
//! and runner of its own, but it only reconciles objects still present in its reflector
//! store (so it cannot drive deletes of objects gone upstream), is keyed by one resource
//! type, and keeps its runner private; so the queue is written here, over tokio only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff settings for [`WorkQueue::add_rate_limited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Delay after the first failure; doubles per failure.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { base: Duration::from_millis(50), max: Duration::from_secs(300) }
    }
}

#[derive(Debug)]
struct State<K> {
    queue: VecDeque<K>,
    /// Keys in `queue` or `low`.
    queued: HashSet<K>,
    /// The low-priority lane: handed out only when `queue` is empty. May hold stale entries
    /// (keys promoted to `queue` since), which `low_keys` tells apart.
    low: VecDeque<K>,
    /// Keys waiting in the low-priority lane.
    low_keys: HashSet<K>,
    /// Keys a worker holds.
    processing: HashSet<K>,
    /// Keys added while a worker held them; queued again on `done`.
    dirty: HashSet<K>,
    /// Earliest pending delayed add per key, so repeated delays do not pile up timers.
    delayed: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    closed: bool,
}

/// A queue of keys shared by producers (watch events, timers) and workers. Cheap to clone.
#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    ready: Arc<Notify>,
    limit: RateLimit,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self { state: Arc::clone(&self.state), ready: Arc::clone(&self.ready), limit: self.limit }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new(limit: RateLimit) -> Self {
        let state = State {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            low: VecDeque::new(),
            low_keys: HashSet::new(),
            processing: HashSet::new(),
            dirty: HashSet::new(),
            delayed: HashMap::new(),
            failures: HashMap::new(),
            closed: false,
        };
        Self { state: Arc::new(Mutex::new(state)), ready: Arc::new(Notify::new()), limit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // Every critical section is a handful of set operations that cannot leave the state
        // half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a key. A key already queued is not queued twice; a key a worker holds is
    /// queued again once that worker is done.
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.low_keys.remove(&key) {
            // Waiting in the low lane: a real change promotes it (its low entry goes stale).
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
            return;
        }
        if s.queued.contains(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.queue.push_back(key);
        drop(s);
        self.ready.notify_one();
    }

    /// Queues a key in the low-priority lane, handed out only when no ordinary key waits: for
    /// bulk re-syncs (a rule change, the periodic resync), so that they never hold up the
    /// changes that come in meanwhile. A key already queued, in either lane, stays where it is.
    pub fn add_low(&self, key: K) {
        let mut s = self.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.low_keys.insert(key.clone());
        s.low.push_back(key);
        drop(s);
        self.ready.notify_one();
    }

    /// Queues a key after `delay`. Of several pending delays for one key, the earliest wins.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let at = Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            match s.delayed.get(&key) {
                Some(pending) if *pending <= at => return,
                _ => {
                    s.delayed.insert(key.clone(), at);
                }
            }
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = {
                let mut s = queue.lock();
                // Only the timer of the earliest pending delay adds; later ones were superseded.
                if s.delayed.get(&key) == Some(&at) {
                    s.delayed.remove(&key);
                    true
                } else {
                    false
                }
            };
            if due {
                queue.add(key);
            }
        });
    }

    /// Queues a key after its backoff: `base * 2^failures`, capped at `max`. Returns the delay.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.limit.base.saturating_mul(1u32 << (failures - 1).min(20)).min(self.limit.max);
        self.add_after(key, delay);
        delay
    }

    /// Forgets a key's failures, so its next backoff starts from the base again.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Failures recorded for a key since it was last forgotten.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for the next key and hands it to the caller, who must call [`WorkQueue::done`].
    /// `None` once the queue is shut down: queued keys are abandoned, held ones finish.
    pub async fn next(&self) -> Option<K> {
        loop {
            // Registering interest before checking avoids missing a notify in between.
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    return Some(key);
                }
                while let Some(key) = s.low.pop_front() {
                    if s.low_keys.remove(&key) {
                        s.queued.remove(&key);
                        s.processing.insert(key.clone());
                        return Some(key);
                    }
                }
            }
            notified.await;
        }
    }

    /// Marks a key handed out by [`WorkQueue::next`] as finished.
    pub fn done(&self, key: &K) {
        let requeue = {
            let mut s = self.lock();
            s.processing.remove(key);
            if s.dirty.remove(key) && !s.closed {
                s.queued.insert(key.clone());
                s.queue.push_back(key.clone());
                true
            } else {
                false
            }
        };
        if requeue {
            self.ready.notify_one();
        }
    }

    /// Keys waiting for a worker, in both lanes (not counting delayed ones or ones being
    /// worked on).
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.queue.len() + s.low_keys.len()
    }

    /// Whether no key waits for a worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys being worked on now.
    pub fn in_flight(&self) -> usize {
        self.lock().processing.len()
    }

    /// Stops handing out keys; workers blocked in [`WorkQueue::next`] get `None`.
    pub fn shut_down(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Whether [`WorkQueue::shut_down`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn low_priority_keys_wait_for_ordinary_ones_and_a_change_promotes_them() {
        let q = mk_queue();
        q.add_low("resync-a");
        q.add_low("resync-b");
        q.add("change");
        q.add_low("change");
        assert_eq!(q.len(), 3, "no key twice");
        assert_eq!(q.next().await, Some("change"), "ordinary keys first");
        q.done(&"change");
        q.add("resync-b");
        assert_eq!(q.next().await, Some("resync-b"), "a real change promotes a waiting low key");
        q.done(&"resync-b");
        assert_eq!(q.next().await, Some("resync-a"));
        q.done(&"resync-a");
        assert!(q.is_empty(), "the promoted key's stale low entry is not handed out again");
    }

    fn mk_queue() -> WorkQueue<&'static str> {
        WorkQueue::new(RateLimit { base: Duration::from_millis(10), max: Duration::from_millis(80) })
    }

    #[tokio::test]
    async fn duplicates_collapse_while_queued() {
        let q = mk_queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_held_comes_back_after_done_and_not_before() {
        let q = mk_queue();
        q.add("a");
        let held = q.next().await;
        assert_eq!(held, Some("a"));
        q.add("a");
        assert!(q.is_empty(), "a held key is not handed to a second worker");
        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_keep_the_earliest_deadline() {
        let q = mk_queue();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(1));
        q.add_after("a", Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(q.is_empty(), "superseded timers must not add the key again");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_per_failure_up_to_the_cap_and_resets_on_forget() {
        let q = mk_queue();
        let delays: Vec<_> = (0..5).map(|_| q.add_rate_limited("a").as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 80]);
        assert_eq!(q.failures(&"a"), 5);
        q.forget(&"a");
        assert_eq!(q.add_rate_limited("a"), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn shut_down_wakes_idle_workers_and_refuses_new_keys() {
        let q = mk_queue();
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(worker.await.ok().flatten(), None);
        q.add("a");
        assert!(q.is_empty());
    }
}
