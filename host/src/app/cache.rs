//! The watch caches: one per kind and side, each object held as its JSON text under its
//! `namespace/name`, filled from the watcher's events the way kube's reflector fills its store.
//!
//! kube's `Store` keeps an `Arc<DynamicObject>` under an `ObjectRef` that carries a copy of
//! the `ApiResource` (five strings) and the object's uid and resourceVersion again: about 2
//! KiB per object over its two sides before the object's own fields (docs/benchmarks.md, the
//! heap profile: 36 of 45 MiB of heap at 10,000 objects were the two stores). Here an object
//! costs its text, its key and a map slot; a read parses the text, which a reconcile did anyway.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tracing::warn;

type Objects = HashMap<Box<str>, Box<str>>;

/// The cached objects of one kind on one side. Shared; filled by its [`CacheWriter`].
#[derive(Debug)]
pub struct ObjectCache {
    objects: RwLock<Objects>,
    ready: watch::Receiver<bool>,
}

/// Fills an [`ObjectCache`] from a watcher's events. Dropping it (the watch ended) releases
/// whoever waits for the cache to be ready, with an error.
#[derive(Debug)]
pub struct CacheWriter {
    cache: Arc<ObjectCache>,
    /// The objects of a list in progress: they replace the cache at its end, so what was
    /// deleted while the watch was down is gone from the cache then.
    listing: Option<Objects>,
    ready: watch::Sender<bool>,
}

/// `namespace/name`, or `name` for a cluster-scoped object. The API server refuses a `/` in a
/// name, so the namespace is what comes before the last `/` (a namespace qualified by its kcp
/// workspace, `<logical cluster>/<namespace>`, has one of its own).
fn id(namespace: Option<&str>, name: &str) -> Box<str> {
    match namespace {
        Some(ns) => format!("{ns}/{name}").into_boxed_str(),
        None => name.into(),
    }
}

fn id_of(o: &DynamicObject) -> Box<str> {
    id(o.metadata.namespace.as_deref(), o.metadata.name.as_deref().unwrap_or_default())
}

/// The text an object is kept as. (The watches drop its type first: the kind gives it.)
fn text_of(o: &DynamicObject) -> Option<Box<str>> {
    match serde_json::to_string(o) {
        Ok(text) => Some(text.into_boxed_str()),
        Err(e) => {
            // Cannot happen for an object parsed from JSON (string keys only).
            warn!(object = %id_of(o), error = %e, "cannot cache an object");
            None
        }
    }
}

/// An object read from a cache for a reconcile, from one parse of its text.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Its metadata, typed; the body is left `null`.
    pub meta: DynamicObject,
    /// The whole object as JSON, with the apiVersion and kind of its resource (list and watch
    /// items often lack them, and the cache drops them).
    pub json: Value,
}

/// An object as it was cached. `None` only if the text is not an object (it always is).
fn parse(text: &str, ar: &ApiResource) -> Option<Cached> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else { return None };
    let metadata = map.get("metadata").map(ObjectMeta::deserialize).transpose().ok()?.unwrap_or_default();
    map.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
    map.insert("kind".into(), Value::String(ar.kind.clone()));
    Some(Cached { meta: DynamicObject { types: None, metadata, data: Value::Null }, json: Value::Object(map) })
}

/// An object's metadata alone, the body skipped: enough for its key and its selection.
fn parse_metadata(text: &str) -> Option<DynamicObject> {
    #[derive(serde::Deserialize)]
    struct MetadataOnly {
        #[serde(default)]
        metadata: ObjectMeta,
    }
    let m: MetadataOnly = serde_json::from_str(text).ok()?;
    Some(DynamicObject { types: None, metadata: m.metadata, data: Value::Null })
}

impl ObjectCache {
    /// An empty cache, and the writer that fills it.
    pub fn new() -> (Arc<Self>, CacheWriter) {
        let (tx, rx) = watch::channel(false);
        let cache = Arc::new(Self { objects: RwLock::default(), ready: rx });
        (Arc::clone(&cache), CacheWriter { cache, listing: None, ready: tx })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        // Inserts and removes are single calls: a poisoned lock is still consistent.
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// One object of resource `ar`, if cached.
    pub fn get(&self, namespace: Option<&str>, name: &str, ar: &ApiResource) -> Option<Cached> {
        let objects = self.read();
        objects.get(&id(namespace, name)).and_then(|text| parse(text, ar))
    }

    /// Whether an object is cached, without parsing it.
    pub fn contains(&self, namespace: Option<&str>, name: &str) -> bool {
        self.read().contains_key(&id(namespace, name))
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// `f` of every cached object's metadata (its body is `null`), one object at a time: for
    /// their keys. (All of them parsed at once were a quarter of the heap's peak at a start.)
    pub fn map_metadata<T>(&self, mut f: impl FnMut(&DynamicObject) -> Option<T>) -> Vec<T> {
        self.read().values().filter_map(|text| parse_metadata(text)).filter_map(|o| f(&o)).collect()
    }

    /// Whether the metadata of some cached object in `namespace` passes `f`.
    pub fn any_in(&self, namespace: &str, mut f: impl FnMut(&DynamicObject) -> bool) -> bool {
        let in_ns = |id: &str| id.rsplit_once('/').is_some_and(|(ns, _)| ns == namespace);
        let objects = self.read();
        objects.iter().filter(|(id, _)| in_ns(id)).filter_map(|(_, text)| parse_metadata(text)).any(|o| f(&o))
    }

    /// Waits until the first list is in. An error: the watch ended before that.
    pub async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.map(|_| ())
    }
}

impl CacheWriter {
    /// Takes one watcher event into the cache.
    pub fn apply(&mut self, event: &Event<DynamicObject>) {
        match event {
            Event::Apply(o) => {
                if let Some(text) = text_of(o) {
                    self.write().insert(id_of(o), text);
                }
            }
            Event::Delete(o) => {
                self.write().remove(&id_of(o));
            }
            Event::Init => self.listing = Some(Objects::new()),
            Event::InitApply(o) => {
                if let Some(text) = text_of(o) {
                    self.listing.get_or_insert_default().insert(id_of(o), text);
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let before = std::mem::replace(&mut *self.write(), listed);
                // Dropped outside the lock: freeing a large map takes a while.
                drop(before);
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.cache.objects.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_ar() -> ApiResource {
        ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("apps", "v1", "Deployment"))
    }

    fn mk(ns: &str, name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": {"app": name},
                         "annotations": {"note": "x"}},
            "spec": {"replicas": 2},
            "status": {"replicas": 2},
        }))
        .expect("a deployment")
    }

    #[test]
    fn an_object_reads_back_as_it_was_cached() {
        let (cache, mut writer) = ObjectCache::new();
        let mut web = mk("a", "web", "7");
        web.types = None;
        writer.apply(&Event::Apply(web.clone()));
        let back = cache.get(Some("a"), "web", &mk_ar()).expect("cached");
        assert_eq!(back.meta.metadata, web.metadata);
        assert!(back.meta.data.is_null(), "the body is in the JSON only");
        let whole = serde_json::to_value(mk("a", "web", "7")).expect("json");
        assert_eq!(back.json, whole, "the object as the API gives it, with its type");
        let other = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "Other"));
        let typed = cache.get(Some("a"), "web", &other).expect("cached");
        assert_eq!(
            (&typed.json["apiVersion"], &typed.json["kind"]),
            (&json!("v1"), &json!("Other")),
            "the resource gives the type"
        );
        assert!(cache.contains(Some("a"), "web"));
        assert!(cache.get(Some("b"), "web", &mk_ar()).is_none(), "another namespace is another object");
        assert!(cache.get(None, "web", &mk_ar()).is_none() && !cache.contains(None, "web"));
    }

    #[test]
    fn apply_replaces_and_delete_removes() {
        let (cache, mut writer) = ObjectCache::new();
        writer.apply(&Event::Apply(mk("a", "web", "7")));
        writer.apply(&Event::Apply(mk("a", "web", "8")));
        assert_eq!(cache.len(), 1);
        let rv = cache.get(Some("a"), "web", &mk_ar()).and_then(|o| o.meta.metadata.resource_version);
        assert_eq!(rv.as_deref(), Some("8"));
        writer.apply(&Event::Delete(mk("a", "web", "9")));
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_list_replaces_the_cache_at_its_end_and_makes_it_ready() {
        let (cache, mut writer) = ObjectCache::new();
        writer.apply(&Event::Apply(mk("a", "gone-while-down", "1")));
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(mk("a", "web", "2")));
        assert!(cache.contains(Some("a"), "gone-while-down"), "the old objects serve until the list ends");
        assert!(!cache.contains(Some("a"), "web"));
        writer.apply(&Event::InitDone);
        assert!(!cache.contains(Some("a"), "gone-while-down"));
        assert!(cache.contains(Some("a"), "web"));
        cache.wait_until_ready().await.expect("ready after the list");
    }

    #[tokio::test]
    async fn waiting_for_a_cache_whose_watch_ended_is_an_error() {
        let (cache, writer) = ObjectCache::new();
        drop(writer);
        assert!(cache.wait_until_ready().await.is_err());
    }

    #[test]
    fn metadata_is_read_of_every_object_or_of_one_namespace_without_bodies() {
        let (cache, mut writer) = ObjectCache::new();
        for (ns, name) in [("a", "x"), ("a", "y"), ("ab", "z"), ("root:org/a", "w")] {
            writer.apply(&Event::Apply(mk(ns, name, "1")));
        }
        let all = cache.map_metadata(|o| Some(o.clone()));
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|o| o.data.is_null() && o.metadata.annotations.is_some()));
        let named = |ns: &str, name: &str| cache.any_in(ns, |o| o.metadata.name.as_deref() == Some(name));
        assert!(named("a", "x") && named("a", "y"));
        assert!(!named("a", "z") && !named("a", "w"), "not ab's, not a workspace's a");
        assert!(named("root:org/a", "w") && !named("root:org", "w"));
    }

    #[test]
    fn a_cached_downstream_copy_still_names_its_upstream_object() {
        use crate::app::keys::{WorkKey, down_key};
        let (cache, mut writer) = ObjectCache::new();
        let mut copy = mk("tenant-a", "web", "1");
        copy.metadata.annotations =
            Some([(crate::sync::mapping::UPSTREAM_NAMESPACE_ANNOTATION.to_string(), "a".to_string())].into());
        writer.apply(&Event::Apply(copy));
        let keys: Vec<WorkKey> = cache.map_metadata(|o| Some(down_key(0, o)));
        let [WorkKey::Object(key)] = keys.as_slice() else { panic!("one object key: {keys:?}") };
        assert_eq!((key.namespace.as_deref(), key.name.as_str()), (Some("a"), "web"));
    }
}
