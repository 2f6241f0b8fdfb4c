//! The work queue: keys to reconcile, duplicates collapsed, one worker per key at a time,
//! delayed and rate-limited re-adds, shares of the workers per kind and for bulk re-syncs, and
//! a shutdown that lets in-flight work finish.
//!
//! This is client-go's `workqueue` semantics plus two shares. kube-runtime's `Controller` has a
//! scheduler and runner of its own, but it only reconciles objects still present in its
//! reflector store (so it cannot drive deletes of objects gone upstream), is keyed by one
//! resource type, and keeps its runner private; so the queue is written here, over tokio only.
//!
//! Keys belong to classes (the controller uses one per kind). Classes take turns, and a class
//! may hold at most `per_class` workers at once: a kind whose rule is slow, or burns its whole
//! deadline on every call, cannot take every worker and stall the other kinds. Keys added
//! with [`WorkQueue::add_low`] (bulk re-syncs) wait in a low lane that is served only when no
//! ordinary key can be, and by at most `low` workers at once, so the changes that come in
//! during a re-sync of everything find a free worker and an unloaded process. And the low lane
//! is paced: at most one key per `low_interval`, so a re-sync of everything loads the API
//! servers (and the cores they share) at a bounded rate instead of as fast as its workers go.

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

/// The class of a key (a small index: the controller uses the kind's position).
pub type Classify<K> = Arc<dyn Fn(&K) -> usize + Send + Sync>;

/// How the workers are shared. The default puts every key in one class with no caps.
pub struct Shares<K> {
    /// The class of a key.
    pub class_of: Classify<K>,
    /// The most keys of one class handed out at once.
    pub per_class: usize,
    /// The most keys from the low lane handed out at once.
    pub low: usize,
    /// The least time between two hand-outs from the low lane, so that a bulk re-sync writes
    /// at a bounded rate however fast each re-sync is. Zero: unpaced.
    pub low_interval: Duration,
}

impl<K> Clone for Shares<K> {
    fn clone(&self) -> Self {
        Self {
            class_of: Arc::clone(&self.class_of),
            per_class: self.per_class,
            low: self.low,
            low_interval: self.low_interval,
        }
    }
}

impl<K> Default for Shares<K> {
    fn default() -> Self {
        Self { class_of: Arc::new(|_| 0), per_class: usize::MAX, low: usize::MAX, low_interval: Duration::ZERO }
    }
}

impl<K> std::fmt::Debug for Shares<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shares")
            .field("per_class", &self.per_class)
            .field("low", &self.low)
            .field("low_interval", &self.low_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Class<K> {
    queue: VecDeque<K>,
    /// May hold stale entries (keys promoted to `queue` since), which `State::low_keys` tells
    /// apart.
    low: VecDeque<K>,
    /// Keys of this class a worker holds.
    busy: usize,
}

impl<K> Default for Class<K> {
    fn default() -> Self {
        Self { queue: VecDeque::new(), low: VecDeque::new(), busy: 0 }
    }
}

/// A key a worker holds: its class and whether it came from the low lane.
#[derive(Debug, Clone, Copy)]
struct Held {
    class: usize,
    low: bool,
}

#[derive(Debug)]
struct State<K> {
    classes: Vec<Class<K>>,
    /// The class served first on the next hand-out, so classes take turns.
    turn: usize,
    /// Keys in a `queue` or a `low` lane.
    queued: HashSet<K>,
    /// Keys waiting in a low lane.
    low_keys: HashSet<K>,
    /// Keys workers hold.
    processing: HashMap<K, Held>,
    /// Keys held from the low lane.
    low_busy: usize,
    /// The earliest the low lane may hand out its next key (its pace).
    low_next: Option<Instant>,
    /// Keys added while a worker held them; queued again on `done`.
    dirty: HashSet<K>,
    /// Earliest pending delayed add per key, so repeated delays do not pile up timers.
    delayed: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    closed: bool,
}

impl<K: Clone + Eq + Hash> State<K> {
    fn class(&mut self, c: usize) -> &mut Class<K> {
        if c >= self.classes.len() {
            self.classes.resize_with(c + 1, Class::default);
        }
        &mut self.classes[c]
    }

    /// The next key a worker may take under the shares, if any.
    fn take(&mut self, shares: &Shares<K>) -> Option<K> {
        let per_class = shares.per_class;
        let n = self.classes.len();
        for i in 0..n {
            let c = (self.turn + i) % n;
            let class = &mut self.classes[c];
            if class.busy >= per_class {
                continue;
            }
            if let Some(key) = class.queue.pop_front() {
                class.busy += 1;
                self.turn = (c + 1) % n;
                self.queued.remove(&key);
                self.processing.insert(key.clone(), Held { class: c, low: false });
                return Some(key);
            }
        }
        if self.low_keys.is_empty() {
            return None;
        }
        if self.low_busy >= shares.low {
            return None;
        }
        if self.low_paced_until().is_some() {
            return None;
        }
        for i in 0..n {
            let c = (self.turn + i) % n;
            if self.classes[c].busy >= per_class {
                continue;
            }
            while let Some(key) = self.classes[c].low.pop_front() {
                if self.low_keys.remove(&key) {
                    self.classes[c].busy += 1;
                    self.low_busy += 1;
                    let now = Instant::now();
                    if !shares.low_interval.is_zero() {
                        self.low_next = Some(now + shares.low_interval);
                    }
                    self.turn = (c + 1) % n;
                    self.queued.remove(&key);
                    self.processing.insert(key.clone(), Held { class: c, low: true });
                    return Some(key);
                }
            }
        }
        None
    }

    /// When the low lane's pace next lets a key go, while keys wait in it and that is later
    /// than now.
    fn low_paced_until(&self) -> Option<Instant> {
        self.low_next.filter(|at| !self.low_keys.is_empty() && *at > Instant::now())
    }

    fn waiting(&self) -> usize {
        self.classes.iter().map(|c| c.queue.len()).sum::<usize>() + self.low_keys.len()
    }
}

/// A queue of keys shared by producers (watch events, timers) and workers. Cheap to clone.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    ready: Arc<Notify>,
    limit: RateLimit,
    shares: Shares<K>,
}

impl<K> std::fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue").field("limit", &self.limit).field("shares", &self.shares).finish_non_exhaustive()
    }
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            ready: Arc::clone(&self.ready),
            limit: self.limit,
            shares: self.shares.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue: one class, no caps.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_shares(limit, Shares::default())
    }

    /// An empty queue that shares its workers as `shares` says.
    pub fn with_shares(limit: RateLimit, shares: Shares<K>) -> Self {
        let state = State {
            classes: Vec::new(),
            turn: 0,
            queued: HashSet::new(),
            low_keys: HashSet::new(),
            processing: HashMap::new(),
            low_busy: 0,
            low_next: None,
            dirty: HashSet::new(),
            delayed: HashMap::new(),
            failures: HashMap::new(),
            closed: false,
        };
        let shares = Shares { per_class: shares.per_class.max(1), low: shares.low.max(1), ..shares };
        Self { state: Arc::new(Mutex::new(state)), ready: Arc::new(Notify::new()), limit, shares }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // Every critical section is a handful of set operations that cannot leave the state
        // half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a key. A key already queued is not queued twice; a key a worker holds is
    /// queued again once that worker is done.
    pub fn add(&self, key: K) {
        let class = (self.shares.class_of)(&key);
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.low_keys.remove(&key) {
            // Waiting in the low lane: a real change promotes it (its low entry goes stale).
            s.class(class).queue.push_back(key);
            drop(s);
            self.ready.notify_one();
            return;
        }
        if s.queued.contains(&key) {
            return;
        }
        if s.processing.contains_key(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.class(class).queue.push_back(key);
        drop(s);
        self.ready.notify_one();
    }

    /// Queues a key in the low-priority lane, handed out only when no ordinary key can be, and
    /// to at most `Shares::low` workers at once: for bulk re-syncs (a rule change, the periodic
    /// resync), so that they never hold up the changes that come in meanwhile. A key already
    /// queued, in either lane, stays where it is.
    pub fn add_low(&self, key: K) {
        let class = (self.shares.class_of)(&key);
        let mut s = self.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        if s.processing.contains_key(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.low_keys.insert(key.clone());
        s.class(class).low.push_back(key);
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
        let delay = jittered(self.limit.base.saturating_mul(1u32 << (failures - 1).min(20)).min(self.limit.max));
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

    /// Waits for the next key the shares allow and hands it to the caller, who must call
    /// [`WorkQueue::done`]. `None` once the queue is shut down: queued keys are abandoned, held
    /// ones finish.
    pub async fn next(&self) -> Option<K> {
        loop {
            // Registering interest before checking avoids missing a notify in between.
            let notified = self.ready.notified();
            let paced_until = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.take(&self.shares) {
                    return Some(key);
                }
                s.low_paced_until()
            };
            // A paced low lane has no event to wake it when its time comes, so a timer does.
            match paced_until {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Marks a key handed out by [`WorkQueue::next`] as finished.
    pub fn done(&self, key: &K) {
        let wake = {
            let mut s = self.lock();
            if let Some(held) = s.processing.remove(key) {
                let class = s.class(held.class);
                class.busy = class.busy.saturating_sub(1);
                if held.low {
                    s.low_busy = s.low_busy.saturating_sub(1);
                }
                if s.dirty.remove(key) && !s.closed {
                    s.queued.insert(key.clone());
                    s.class(held.class).queue.push_back(key.clone());
                }
            }
            // A freed share may let a waiting key of a capped class (or of the low lane) go.
            s.waiting() > 0
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// Keys waiting for a worker, in both lanes (not counting delayed ones or ones being
    /// worked on).
    pub fn len(&self) -> usize {
        self.lock().waiting()
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

/// `delay` less up to half of it, at random ("equal jitter"): keys that failed together, as
/// every key does in an outage, come back spread out instead of at one moment.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(1.0 - rand::random::<f64>() / 2.0)
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

    /// Keys are "class:name"; class "a" is 0, "b" is 1, anything else 2.
    fn mk_shared_queue(per_class: usize, low: usize) -> WorkQueue<&'static str> {
        let class_of: Classify<&'static str> = Arc::new(|k: &&'static str| match k.split(':').next() {
            Some("a") => 0,
            Some("b") => 1,
            _ => 2,
        });
        WorkQueue::with_shares(RateLimit::default(), Shares { class_of, per_class, low, low_interval: Duration::ZERO })
    }

    fn mk_paced_queue(low_interval: Duration) -> WorkQueue<&'static str> {
        WorkQueue::with_shares(RateLimit::default(), Shares { low_interval, ..Shares::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn the_low_lane_hands_out_at_most_one_key_per_interval_and_ordinary_keys_are_not_paced() {
        let q = mk_paced_queue(Duration::from_millis(10));
        let start = Instant::now();
        for k in ["resync-1", "resync-2", "resync-3"] {
            q.add_low(k);
        }
        let mut low = Vec::new();
        for _ in 0..3 {
            let key = q.next().await;
            low.push((key, start.elapsed().as_millis()));
            if let Some(k) = key {
                q.done(&k);
            }
        }
        assert_eq!(low, [(Some("resync-1"), 0), (Some("resync-2"), 10), (Some("resync-3"), 20)]);

        q.add_low("resync-4");
        for k in ["change-1", "change-2"] {
            q.add(k);
        }
        let at = Instant::now();
        assert_eq!(q.next().await, Some("change-1"));
        assert_eq!(q.next().await, Some("change-2"));
        assert_eq!(at.elapsed(), Duration::ZERO, "changes go at once while the low lane waits its turn");
        assert_eq!(q.next().await, Some("resync-4"));
        assert_eq!(at.elapsed(), Duration::from_millis(10), "the low lane's pace is kept across the changes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_waiting_on_the_pace_wakes_when_it_ends_with_no_other_event() {
        let q = mk_paced_queue(Duration::from_secs(1));
        q.add_low("resync-1");
        q.add_low("resync-2");
        assert_eq!(q.next().await, Some("resync-1"));
        let start = Instant::now();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { (q.next().await, start.elapsed()) }
        });
        let got = waiting.await.ok();
        assert_eq!(got, Some((Some("resync-2"), Duration::from_secs(1))));
    }

    /// The next key if one can be handed out now, without waiting.
    async fn try_next(q: &WorkQueue<&'static str>) -> Option<&'static str> {
        tokio::time::timeout(Duration::from_millis(20), q.next()).await.ok().flatten()
    }

    #[tokio::test]
    async fn a_class_never_holds_more_than_its_share_and_other_classes_still_get_workers() {
        let q = mk_shared_queue(2, usize::MAX);
        for k in ["a:1", "a:2", "a:3", "a:4"] {
            q.add(k);
        }
        assert_eq!(try_next(&q).await, Some("a:1"));
        assert_eq!(try_next(&q).await, Some("a:2"));
        assert_eq!(try_next(&q).await, None, "class a holds its 2 workers; a:3 waits");
        q.add("b:1");
        assert_eq!(try_next(&q).await, Some("b:1"), "another kind is served while a is at its share");
        q.done(&"a:1");
        assert_eq!(try_next(&q).await, Some("a:3"), "a freed share lets the next a go");
        assert_eq!(q.in_flight(), 3);
    }

    #[tokio::test]
    async fn a_worker_waiting_on_a_full_share_is_woken_when_the_share_frees() {
        let q = mk_shared_queue(1, usize::MAX);
        q.add("a:1");
        q.add("a:2");
        assert_eq!(try_next(&q).await, Some("a:1"));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.done(&"a:1");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.ok().and_then(Result::ok).flatten(), Some("a:2"));
    }

    #[tokio::test]
    async fn classes_take_turns() {
        let q = mk_shared_queue(usize::MAX, usize::MAX);
        for k in ["a:1", "a:2", "a:3", "b:1", "b:2"] {
            q.add(k);
        }
        let mut order = Vec::new();
        while let Some(k) = try_next(&q).await {
            order.push(k);
        }
        assert_eq!(order, ["a:1", "b:1", "a:2", "b:2", "a:3"], "a burst of one kind does not starve another");
    }

    #[tokio::test]
    async fn the_low_lane_gets_at_most_its_share_and_ordinary_keys_pass_it() {
        let q = mk_shared_queue(usize::MAX, 1);
        q.add_low("a:1");
        q.add_low("a:2");
        assert_eq!(try_next(&q).await, Some("a:1"));
        assert_eq!(try_next(&q).await, None, "one low key at a time");
        q.add("b:1");
        assert_eq!(try_next(&q).await, Some("b:1"), "an ordinary key goes past the low lane's share");
        q.done(&"a:1");
        assert_eq!(try_next(&q).await, Some("a:2"));
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
    async fn backoff_doubles_per_failure_up_to_the_cap_with_jitter_and_resets_on_forget() {
        let q = mk_queue();
        let delays: Vec<_> = (0..5).map(|_| q.add_rate_limited("a").as_millis()).collect();
        for (d, full) in delays.iter().zip([10, 20, 40, 80, 80]) {
            assert!((full / 2..=full).contains(d), "{delays:?}: each between half and all of {full}");
        }
        assert_eq!(q.failures(&"a"), 5);
        q.forget(&"a");
        assert!(q.add_rate_limited("a") <= Duration::from_millis(10));
        // Keys that failed together (an outage) do not all come back at one moment.
        let spread: HashSet<u128> = (0..20).map(|_| jittered(Duration::from_secs(1)).as_millis()).collect();
        assert!(spread.len() > 10, "{spread:?}");
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
