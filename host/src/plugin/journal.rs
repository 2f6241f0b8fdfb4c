//! The explain record: the last rule decisions per object, bounded in objects and in entries.
//!
//! Every hook call the registry makes on an object adds one [`Entry`]: which plugin version,
//! which hook, the paths it changed (never values), its decision, fuel and duration. Each
//! object keeps its last [`ENTRIES_PER_OBJECT`] entries and at most `max_objects` objects are
//! kept; the one touched longest ago goes first. An entry holds at most
//! [`crate::sync::differ::MAX_PATHS`] paths, so the whole record is bounded (see the README's
//! "Explain" section for the figure).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// Entries kept per object: the last sync's calls, with room for a chain of a few plugins.
pub(super) const ENTRIES_PER_OBJECT: usize = 4;

/// Objects kept by default.
pub const DEFAULT_MAX_OBJECTS: usize = 1024;

/// One hook call on one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The plugin's name.
    pub plugin: String,
    /// The first 12 hex digits of its sha256.
    pub digest: String,
    /// `transform` or `preserve`.
    pub hook: &'static str,
    /// The fields its output changed, as JSON pointers.
    pub paths: Vec<String>,
    /// More fields changed than are listed.
    pub truncated: bool,
    /// `apply`, `recreate`, `skip`, or `failed: <class>`.
    pub decision: String,
    /// Fuel burnt.
    pub fuel: u64,
    /// Wall time, in microseconds.
    pub micros: u64,
    /// When, in seconds since the Unix epoch.
    pub at_unix_seconds: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries by object, with the touch number of the object's last entry.
    objects: HashMap<String, (u64, VecDeque<Entry>)>,
    /// Touches in order; stale ones (the object was touched again since) are skipped.
    order: VecDeque<(u64, String)>,
    touches: u64,
}

/// The bounded record; clones share it.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    max_objects: usize,
    per_object: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_OBJECTS)
    }
}

impl Journal {
    /// A record of at most `max_objects` objects; 0 records nothing.
    pub fn new(max_objects: usize) -> Self {
        Self::with_entries(max_objects, ENTRIES_PER_OBJECT)
    }

    /// A record of at most `max_objects` objects, keeping `per_object` entries of each: a
    /// one-off evaluation (`explain`) keeps every step of a long chain.
    pub fn with_entries(max_objects: usize, per_object: usize) -> Self {
        Self { inner: Arc::default(), max_objects, per_object: per_object.max(1) }
    }

    /// Whether anything is recorded (callers skip the path walk when not).
    pub fn enabled(&self) -> bool {
        self.max_objects > 0
    }

    /// Adds one entry for `object` (`Kind namespace/name`).
    pub fn record(&self, object: &str, entry: Entry) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.touches += 1;
        let touch = inner.touches;
        let slot = inner.objects.entry(object.to_string()).or_default();
        slot.0 = touch;
        if slot.1.len() >= self.per_object {
            slot.1.pop_front();
        }
        slot.1.push_back(entry);
        inner.order.push_back((touch, object.to_string()));
        while inner.objects.len() > self.max_objects {
            let Some((t, key)) = inner.order.pop_front() else { break };
            if inner.objects.get(&key).is_some_and(|(last, _)| *last == t) {
                inner.objects.remove(&key);
            }
        }
        // Stale touches pile up for objects synced often; drop them before they outgrow the map.
        if inner.order.len() > 2 * self.max_objects.max(64) {
            let Inner { objects, order, .. } = &mut *inner;
            order.retain(|(t, key)| objects.get(key).is_some_and(|(last, _)| last == t));
        }
    }

    /// The entries of one object, oldest first.
    pub fn entries(&self, object: &str) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.objects.get(object).map(|(_, e)| e.iter().cloned().collect()).unwrap_or_default()
    }

    /// How many objects are recorded.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).objects.len()
    }

    /// Whether no object is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_entry(plugin: &str, path: &str) -> Entry {
        Entry {
            plugin: plugin.into(),
            digest: "0123456789ab".into(),
            hook: "preserve",
            paths: vec![path.into()],
            truncated: false,
            decision: "apply".into(),
            fuel: 1,
            micros: 1,
            at_unix_seconds: 0,
        }
    }

    #[test]
    fn keeps_the_last_entries_of_the_objects_touched_last() {
        let j = Journal::new(2);
        for i in 0..10 {
            j.record("Service a/x", mk_entry("service", &format!("/p{i}")));
        }
        let e = j.entries("Service a/x");
        assert_eq!(e.len(), ENTRIES_PER_OBJECT);
        assert_eq!(e.last().map(|e| e.paths[0].as_str()), Some("/p9"));
        j.record("Service a/y", mk_entry("service", "/y"));
        // x was touched before y; touching x again makes z evict y.
        j.record("Service a/x", mk_entry("service", "/again"));
        j.record("Service a/z", mk_entry("service", "/z"));
        assert_eq!(j.len(), 2);
        assert!(j.entries("Service a/y").is_empty());
        assert!(!j.entries("Service a/x").is_empty() && !j.entries("Service a/z").is_empty());
    }

    #[test]
    fn stale_touches_do_not_grow_without_bound() {
        let j = Journal::new(1);
        for i in 0..10_000 {
            j.record("Service a/x", mk_entry("service", &format!("/p{i}")));
        }
        let order = j.inner.lock().unwrap().order.len();
        assert!(order <= 2 * 64 + 1, "{order}");
        assert!(Journal::new(0).entries("x").is_empty());
    }
}
