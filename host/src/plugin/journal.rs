//! The explain record: the last rule decisions per object, bounded in objects and in entries.
//!
//! Every hook call the registry makes on an object adds one [`Entry`]: which plugin version,
//! which hook, the paths it changed (never values), its decision, fuel and duration. Each
//! object keeps its last [`ENTRIES_PER_OBJECT`] entries and at most `max_objects` objects are
//! kept; the one touched longest ago goes first. An entry holds at most
//! [`crate::sync::differ::MAX_PATHS`] paths, so the whole record is bounded (see the README's
//! "Explain" section for the figure).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

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

/// Each object's last entries, the object touched longest ago evicted first.
type Objects = Mutex<LruCache<String, VecDeque<Entry>>>;

/// The bounded record; clones share it. None records nothing.
#[derive(Debug, Clone)]
pub struct Journal {
    objects: Option<Arc<Objects>>,
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
        let objects = NonZeroUsize::new(max_objects).map(|n| Arc::new(Mutex::new(LruCache::new(n))));
        Self { objects, per_object: per_object.max(1) }
    }

    /// Whether anything is recorded (callers skip the path walk when not).
    pub fn enabled(&self) -> bool {
        self.objects.is_some()
    }

    /// Adds one entry for `object` (`Kind namespace/name`).
    pub fn record(&self, object: &str, entry: Entry) {
        let Some(objects) = &self.objects else { return };
        let mut objects = objects.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = objects.get_or_insert_mut(object.to_string(), VecDeque::new);
        if entries.len() >= self.per_object {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The entries of one object, oldest first.
    pub fn entries(&self, object: &str) -> Vec<Entry> {
        let Some(objects) = &self.objects else { return Vec::new() };
        let objects = objects.lock().unwrap_or_else(PoisonError::into_inner);
        objects.peek(object).map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }

    /// How many objects are recorded.
    pub fn len(&self) -> usize {
        self.objects.as_ref().map_or(0, |o| o.lock().unwrap_or_else(PoisonError::into_inner).len())
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
    fn a_record_of_no_objects_records_nothing() {
        let j = Journal::new(0);
        j.record("Service a/x", mk_entry("service", "/x"));
        assert!(!j.enabled() && j.is_empty() && j.entries("Service a/x").is_empty());
    }
}
