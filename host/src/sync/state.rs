//! The state cache: what downsync last wrote for each object. Shared by the workers; read by
//! metrics and the CLI.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use super::types::{Gvr, ObjectKey};

/// What downsync knows about one downstream object after its last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceState {
    /// The object.
    pub key: ObjectKey,
    /// Its downstream resourceVersion after our last write or check.
    pub resource_version: String,
    /// Its downstream generation, if the kind has one.
    pub generation: Option<i64>,
    /// Its downstream uid.
    pub uid: String,
    /// Hash of the desired object (and rules) last applied.
    pub desired_hash: String,
    /// When it was last synced.
    pub last_sync: SystemTime,
}

/// Thread-safe map from object to state. Cheap to clone; clones share the map.
///
/// Invariant: an entry exists only for an object downsync has created, updated or found
/// unchanged, and it is removed once the object is gone downstream. The lock is never held
/// across an await.
#[derive(Debug, Clone, Default)]
pub struct StateCache {
    inner: Arc<RwLock<HashMap<ObjectKey, ResourceState>>>,
}

impl StateCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ObjectKey, ResourceState>> {
        // A panic while holding the lock cannot leave a half-written entry (inserts are
        // single calls), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ObjectKey, ResourceState>> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of one object.
    pub fn get(&self, key: &ObjectKey) -> Option<ResourceState> {
        self.read().get(key).cloned()
    }

    /// Records the state of an object.
    pub fn insert(&self, state: ResourceState) {
        self.write().insert(state.key.clone(), state);
    }

    /// Forgets an object.
    pub fn remove(&self, key: &ObjectKey) -> Option<ResourceState> {
        self.write().remove(key)
    }

    /// All entries, sorted by key, optionally of one resource.
    pub fn list(&self, gvr: Option<&Gvr>) -> Vec<ResourceState> {
        let mut out: Vec<_> = self.read().values().filter(|s| gvr.is_none_or(|g| &s.key.gvr == g)).cloned().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// How many objects are tracked, optionally of one resource.
    pub fn count(&self, gvr: Option<&Gvr>) -> usize {
        match gvr {
            None => self.read().len(),
            Some(g) => self.read().keys().filter(|k| &k.gvr == g).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_key(resource: &str, name: &str) -> ObjectKey {
        ObjectKey {
            gvr: Gvr { group: String::new(), version: "v1".into(), resource: resource.into() },
            kind: "K".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    fn mk_state(key: ObjectKey, rv: &str) -> ResourceState {
        ResourceState {
            key,
            resource_version: rv.into(),
            generation: None,
            uid: "u".into(),
            desired_hash: "h".into(),
            last_sync: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn concurrent_writers_leave_every_entry_readable() {
        let cache = StateCache::new();
        std::thread::scope(|s| {
            for t in 0..8 {
                let cache = cache.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        let key = mk_key("configmaps", &format!("cm-{t}-{i}"));
                        cache.insert(mk_state(key.clone(), "1"));
                        cache.insert(mk_state(key.clone(), "2"));
                        if i % 2 == 0 {
                            cache.remove(&key);
                        }
                    }
                });
            }
        });
        assert_eq!(cache.count(None), 8 * 250);
        assert!(cache.list(None).iter().all(|s| s.resource_version == "2"));
    }

    #[test]
    fn list_and_count_filter_by_resource() {
        let cache = StateCache::new();
        cache.insert(mk_state(mk_key("configmaps", "b"), "1"));
        cache.insert(mk_state(mk_key("configmaps", "a"), "1"));
        cache.insert(mk_state(mk_key("secrets", "a"), "1"));
        let cms = mk_key("configmaps", "x").gvr;
        assert_eq!(cache.count(Some(&cms)), 2);
        let names: Vec<_> = cache.list(Some(&cms)).into_iter().map(|s| s.key.name).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
