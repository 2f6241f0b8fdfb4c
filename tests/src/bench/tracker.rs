//! Watches the downstream side: which objects are there and correct, when the last one became correct, and how many writes happened.
//!
//! One watch per kind, over all namespaces, selected by the run's label. Every event is
//! timestamped on arrival, so "done" is the moment the last expected object arrived, not the
//! moment a poll noticed. A write is an event with a resourceVersion the tracker had not seen
//! for that object, so a watch restart (relist) does not count old objects again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use kube::Client;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::objects::{self, Key, Kind, RUN_LABEL};

/// Reduces an object to what is compared against the expectation.
pub type Fingerprint = fn(&Value) -> Value;

#[derive(Debug, Default)]
struct State {
    /// Live objects: resourceVersion and fingerprint.
    seen: HashMap<Key, (String, Value)>,
    /// What must be there, by key.
    expected: HashMap<Key, Value>,
    /// How many expected keys are seen with the expected fingerprint.
    matched: usize,
    /// When `matched` last reached `expected.len()`; cleared when it drops.
    done_at: Option<Instant>,
    /// Writes (new resourceVersions) seen.
    writes: u64,
    /// Every write as (arrival, fingerprint), when asked for.
    log: Option<Vec<(Instant, Value)>>,
    /// Kinds whose initial list is complete.
    listed: usize,
}

impl State {
    fn is_match(&self, key: &Key) -> bool {
        match (self.expected.get(key), self.seen.get(key)) {
            (Some(want), Some((_, got))) => want == got,
            _ => false,
        }
    }

    fn settle(&mut self, now: Instant) {
        if self.matched == self.expected.len() {
            self.done_at.get_or_insert(now);
        } else {
            self.done_at = None;
        }
    }

    fn apply(&mut self, key: Key, rv: String, fp: Value, now: Instant) {
        let was = self.is_match(&key);
        let fresh = self.seen.get(&key).is_none_or(|(old, _)| *old != rv);
        if fresh {
            self.writes += 1;
            if let Some(log) = &mut self.log {
                log.push((now, fp.clone()));
            }
        }
        self.seen.insert(key.clone(), (rv, fp));
        self.adjust(was, self.is_match(&key), now);
    }

    fn delete(&mut self, key: &Key, now: Instant) {
        let was = self.is_match(key);
        self.seen.remove(key);
        self.adjust(was, false, now);
    }

    fn adjust(&mut self, was: bool, is: bool, now: Instant) {
        match (was, is) {
            (false, true) => self.matched += 1,
            (true, false) => self.matched -= 1,
            _ => {}
        }
        self.settle(now);
    }
}

/// The downstream watch of one run.
#[derive(Debug)]
pub struct Tracker {
    state: Arc<Mutex<State>>,
    kinds: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Tracker {
    /// Starts watching `kinds` of run `run` on `client`, reducing objects with `fingerprint`;
    /// with `log`, every write is also recorded. Returns once every initial list is done.
    pub async fn start(
        client: &Client,
        kinds: &[Kind],
        run: &str,
        fingerprint: Fingerprint,
        log: bool,
    ) -> Result<Self> {
        let state = Arc::new(Mutex::new(State { log: log.then(Vec::new), ..State::default() }));
        let mut tasks = Vec::new();
        for &kind in kinds {
            let api = objects::api(client, kind, None);
            let config = watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"));
            let state = state.clone();
            let api_version = kind.api_resource().api_version;
            tasks.push(tokio::spawn(async move {
                let mut events = watcher::watcher(api, config).boxed();
                while let Some(event) = events.next().await {
                    let now = Instant::now();
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => {
                            eprintln!("bench: downstream {} watch error (it retries): {e}", kind.name());
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    match event {
                        Event::Apply(obj) | Event::InitApply(obj) => {
                            let Ok(mut v) = serde_json::to_value(&obj) else { continue };
                            v["apiVersion"] = json!(api_version);
                            v["kind"] = json!(kind.name());
                            let Some(key) = objects::key_of(&v) else { continue };
                            let rv = obj.metadata.resource_version.clone().unwrap_or_default();
                            s.apply(key, rv, fingerprint(&v), now);
                        }
                        Event::Delete(obj) => {
                            let key = (
                                kind,
                                obj.metadata.namespace.unwrap_or_default(),
                                obj.metadata.name.unwrap_or_default(),
                            );
                            s.delete(&key, now);
                        }
                        Event::InitDone => s.listed += 1,
                        Event::Init => {}
                    }
                }
            }));
        }
        let tracker = Self { state, kinds: kinds.len(), tasks };
        let deadline = Instant::now() + Duration::from_secs(120);
        while tracker.lock().listed < tracker.kinds {
            if Instant::now() > deadline {
                bail!("the downstream watches did not finish their initial lists within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(tracker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what must be downstream from now on.
    pub fn expect(&self, expected: HashMap<Key, Value>) {
        let mut s = self.lock();
        s.expected = expected;
        s.matched = s.expected.keys().filter(|k| s.is_match(k)).count();
        s.done_at = None;
        s.settle(Instant::now());
    }

    /// Waits until every expected object is downstream and correct; returns when the last one
    /// arrived. Prints progress every 10 s.
    pub async fn wait_done(&self, timeout: Duration, mut alive: impl FnMut() -> Result<()>) -> Result<Instant> {
        let started = Instant::now();
        let mut next_report = started + Duration::from_secs(10);
        loop {
            let (done, matched, total) = {
                let s = self.lock();
                (s.done_at, s.matched, s.expected.len())
            };
            if let Some(at) = done {
                return Ok(at);
            }
            alive()?;
            let now = Instant::now();
            if now > started + timeout {
                bail!(
                    "only {matched} of {total} objects were correct downstream after {timeout:?}; for example:\n{}",
                    self.mismatches(3)
                );
            }
            if now > next_report {
                eprintln!("bench:   {matched}/{total} correct downstream after {:.0?}", now - started);
                next_report = now + Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Up to `limit` expected objects that are missing or wrong, with what was seen.
    pub fn mismatches(&self, limit: usize) -> String {
        let s = self.lock();
        s.expected
            .iter()
            .filter(|(k, _)| !s.is_match(k))
            .take(limit)
            .map(|(k, want)| {
                let got = s.seen.get(k).map_or_else(|| "missing".to_string(), |(_, fp)| fp.to_string());
                format!("  {} {}/{}: want {want}, got {got}", k.0.name(), k.1, k.2)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many live objects have a fingerprint that passes `pred`.
    pub fn count_live(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lock().seen.values().filter(|(_, fp)| pred(fp)).count()
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Objects seen now.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether no object is seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writes recorded since `since` (only when started with `log`).
    pub fn log_since(&self, since: Instant) -> Vec<(Instant, Value)> {
        let s = self.lock();
        let Some(log) = &s.log else { return Vec::new() };
        log[log.partition_point(|(t, _)| *t < since)..].to_vec()
    }

    /// When the first write since `since` whose fingerprint passes `pred` arrived, without
    /// copying the log (this is polled while the syncer under test runs).
    pub fn first_since(&self, since: Instant, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        let s = self.lock();
        let log = s.log.as_ref()?;
        log[log.partition_point(|(t, _)| *t < since)..].iter().find(|(_, fp)| pred(fp)).map(|(t, _)| *t)
    }

    /// How many writes since `since` have a fingerprint that passes `pred`.
    pub fn count_since(&self, since: Instant, pred: impl Fn(&Value) -> bool) -> usize {
        let s = self.lock();
        let Some(log) = &s.log else { return 0 };
        log[log.partition_point(|(t, _)| *t < since)..].iter().filter(|(_, fp)| pred(fp)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        (Kind::ConfigMap, "n".into(), name.into())
    }

    #[test]
    fn done_when_every_expected_object_matches_and_not_before() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.expected = [(key("a"), json!(1)), (key("b"), json!(2))].into();
        s.apply(key("a"), "1".into(), json!(1), t0);
        assert!(s.done_at.is_none());
        s.apply(key("b"), "2".into(), json!(0), t0);
        assert!(s.done_at.is_none(), "b is there but wrong");
        let t1 = Instant::now();
        s.apply(key("b"), "3".into(), json!(2), t1);
        assert_eq!(s.done_at, Some(t1));
        s.delete(&key("a"), t1);
        assert!(s.done_at.is_none());
    }

    #[test]
    fn a_relisted_object_with_the_same_version_is_not_a_write() {
        let mut s = State::default();
        let now = Instant::now();
        s.apply(key("a"), "1".into(), json!(1), now);
        s.apply(key("a"), "1".into(), json!(1), now);
        assert_eq!(s.writes, 1);
        s.apply(key("a"), "2".into(), json!(1), now);
        assert_eq!(s.writes, 2);
    }
}
