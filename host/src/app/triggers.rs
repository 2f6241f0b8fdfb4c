//! What makes an object be looked at: a reflector per kind and side whose events become queue
//! keys, the keys themselves, and the sets of keys for the initial sync and the resyncs.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::config::{ResourceConfig, RunConfig};
use super::controller::Controller;
use super::startup::Resolved;
use crate::kube::{reconnect, upstream};
use crate::sync::Resource;
use crate::sync::intent::{self, Intent};
use crate::sync::mapping::{self, UPSTREAM_NAMESPACE_ANNOTATION};
use crate::sync::ownership;
use crate::sync::workspaces;

/// One upstream object, by its upstream coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// Index of its kind in the config's `resources`.
    pub resource: usize,
    /// Upstream namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// A queue key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkKey {
    /// Sync (or delete the copy of) one upstream object.
    Object(ObjectKey),
    /// Check whether the downstream namespace downsync created for this upstream namespace
    /// can go.
    Namespace {
        /// The downstream namespace.
        downstream: String,
        /// The upstream namespace it stands for.
        upstream: String,
    },
}

/// One configured kind, resolved on both sides, with its reflector stores.
pub struct Watched {
    /// The configuration entry.
    pub config: ResourceConfig,
    /// Upstream resource.
    pub up_ar: ApiResource,
    /// Downstream resource.
    pub down_ar: ApiResource,
    /// Downstream resource, as the core names it.
    pub down_resource: Resource,
    /// Selected upstream objects.
    pub up_store: Store<DynamicObject>,
    /// Owned downstream objects.
    pub down_store: Store<DynamicObject>,
}

impl Watched {
    /// The upstream object of a key, from the cache.
    pub fn upstream(&self, key: &ObjectKey) -> Option<Arc<DynamicObject>> {
        let mut r = ObjectRef::new_with(&key.name, self.up_ar.clone());
        if let Some(ns) = &key.namespace {
            r = r.within(ns);
        }
        self.up_store.get(&r)
    }

    /// The owned downstream copy in `downstream_ns`, from the cache.
    pub fn downstream(&self, name: &str, downstream_ns: Option<&str>) -> Option<Arc<DynamicObject>> {
        let mut r = ObjectRef::new_with(name, self.down_ar.clone());
        if let Some(ns) = downstream_ns {
            r = r.within(ns);
        }
        self.down_store.get(&r)
    }
}

fn strip_managed_fields(o: &mut DynamicObject) {
    // The largest parts of most objects, and never read: keeping them would double the cache.
    // (kubectl's last-applied record is dropped from the desired object anyway.)
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(mapping::LAST_APPLIED_ANNOTATION);
    }
}

/// Objects per page of a watcher's initial list. A page is decoded whole (its text, then a
/// `serde_json::Value` tree per object, managedFields included, before [`pack`] and
/// [`compact_managed_fields`] shrink them), and every reflector of both sides lists at once on
/// a start: with kube's default of 500, the pages in flight were 18 MiB of the 71 MiB heap peak
/// at 10,000 objects (docs/benchmarks.md, section 4). 100 cuts that by five, for four times as
/// many list requests (100 per kind and side at 10,000 objects).
const LIST_PAGE: u32 = 100;

/// Keeps a cached object's body (everything but its metadata) as its JSON text. A
/// `serde_json::Value` tree costs about five times the text (a map entry, a key and a value
/// allocation per field): the two caches of 10,000 objects held 122 MiB of trees at their
/// peak (docs/benchmarks.md, section 4). A reconcile parses the text once; [`body`] reads it.
///
/// The labels and annotations go into the text too, under [`PACKED_METADATA`]: as typed
/// metadata each non-empty map is a B-tree node of about 540 bytes however few its entries,
/// which made them the largest single part of the cached objects (about 15 of 51 MiB at
/// 10,000 objects). The body of a `DynamicObject` never has a `metadata` key of its own (the
/// metadata is its typed field), so the key cannot collide. `types` goes: list items often
/// lack it, and [`super::reconcile::to_value`] takes apiVersion and kind from the resource.
fn pack(o: &mut DynamicObject) {
    o.types = None;
    if o.data.is_string() {
        return;
    }
    let mut data = std::mem::take(&mut o.data);
    if let serde_json::Value::Object(body) = &mut data {
        let mut meta = serde_json::Map::new();
        for (field, map) in [("labels", o.metadata.labels.take()), ("annotations", o.metadata.annotations.take())] {
            if let Some(map) = map {
                meta.insert(field.into(), map.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect());
            }
        }
        if !meta.is_empty() {
            body.insert(PACKED_METADATA.into(), serde_json::Value::Object(meta));
        }
    }
    match serde_json::to_string(&data) {
        Ok(mut text) => {
            text.shrink_to_fit();
            o.data = serde_json::Value::String(text);
        }
        // Cannot happen for a tree parsed from JSON (string keys only); keep what there is.
        Err(_) => o.data = data,
    }
}

/// The key in a packed body that holds the object's labels and annotations.
const PACKED_METADATA: &str = "metadata";

/// A cached object's body and its labels and annotations, packed or not (as a JSON map of
/// `labels` and `annotations`, without those it does not have).
pub fn unpack(o: &DynamicObject) -> (serde_json::Value, serde_json::Map<String, serde_json::Value>) {
    let mut meta = serde_json::Map::new();
    for (field, map) in [("labels", &o.metadata.labels), ("annotations", &o.metadata.annotations)] {
        if let Some(map) = map {
            meta.insert(
                field.into(),
                map.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
            );
        }
    }
    let mut body = match &o.data {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        other => other.clone(),
    };
    if let Some(serde_json::Value::Object(packed)) = body.as_object_mut().and_then(|b| b.remove(PACKED_METADATA)) {
        meta.extend(packed);
    }
    (body, meta)
}

/// The body of a cached object, as [`pack`] left it (or as it is, if it was never packed).
pub fn body(o: &DynamicObject) -> serde_json::Value {
    unpack(o).0
}

/// One annotation of a cached object, packed or not. Reads the packed text without building
/// its tree (the fields it does not need are skipped).
pub fn annotation(o: &DynamicObject, name: &str) -> Option<String> {
    if let Some(a) = &o.metadata.annotations {
        return a.get(name).cloned();
    }
    #[derive(serde::Deserialize)]
    struct Packed {
        metadata: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        annotations: Option<std::collections::BTreeMap<String, String>>,
    }
    let text = o.data.as_str()?;
    let packed: Packed = serde_json::from_str(text).ok()?;
    packed.metadata?.annotations?.remove(name)
}

/// For upstream objects: what the rules need of `managedFields` (which fields no client asked
/// for, see [`Intent`]) is computed here, once per object version, and kept in their place as
/// one compact entry; the rest is dropped as downstream.
fn compact_managed_fields(o: &mut DynamicObject) {
    let intent = match o.metadata.managed_fields.take() {
        Some(entries) if !entries.is_empty() => {
            let last_applied = o.metadata.annotations.as_ref().and_then(|a| a.get(intent::LAST_APPLIED_ANNOTATION));
            let sets: Vec<std::borrow::Cow<'_, serde_json::Value>> = entries
                .iter()
                .filter_map(|e| {
                    let set = &e.fields_v1.as_ref()?.0;
                    Some(intent::asked_fields(e.manager.as_deref(), set, last_applied.map(String::as_str)))
                })
                .collect();
            let sets: Vec<&serde_json::Value> = sets.iter().map(AsRef::as_ref).collect();
            let mut meta = serde_json::Map::new();
            for (k, v) in [("labels", &o.metadata.labels), ("annotations", &o.metadata.annotations)] {
                if let Some(v) = v.as_ref().and_then(|v| serde_json::to_value(v).ok()) {
                    meta.insert(k.into(), v);
                }
            }
            if sets.is_empty() {
                Intent::Unknown
            } else {
                Intent::ServerSet(intent::server_set(&sets, &o.data, &serde_json::Value::Object(meta)))
            }
        }
        _ => Intent::Unknown,
    };
    strip_managed_fields(o);
    o.metadata.managed_fields = intent
        .compact_entry()
        .and_then(|entry| serde_json::from_value::<ManagedFieldsEntry>(entry).ok())
        .map(|entry| vec![entry]);
    pack(o);
}

/// The event stream of one reflector.
pub type EventStream = futures::stream::BoxStream<'static, std::result::Result<Event<DynamicObject>, watcher::Error>>;

/// Keys an object read from many kcp workspaces by its workspace as well: its namespace
/// becomes `<logical cluster>/<namespace>` ([`workspaces::qualify_namespace`]), in the cache
/// and so in every key, since two workspaces' `default/app` are two objects. An object without
/// a valid `kcp.io/cluster` keeps its namespace.
fn qualify_by_workspace(o: &mut DynamicObject) {
    let cluster = o.metadata.annotations.as_ref().and_then(|a| a.get(workspaces::CLUSTER_ANNOTATION));
    let Some(cluster) = cluster.filter(|c| workspaces::is_logical_cluster_name(c)) else { return };
    if let Some(ns) = &o.metadata.namespace {
        o.metadata.namespace = Some(workspaces::qualify_namespace(cluster, ns));
    }
}

/// Builds a reflector per kind and side: the stores, and the event streams that fill them.
/// With `many_workspaces`, upstream objects are keyed by their kcp workspace too.
pub fn reflectors(
    config: &RunConfig,
    resolved: Vec<Resolved>,
    up: &Client,
    down: &Client,
    many_workspaces: bool,
) -> (Vec<Watched>, Vec<(EventStream, EventStream)>) {
    let owned = ownership::owned_selector(&config.sync.ownership);
    let mut streams = Vec::new();
    let mut watched = Vec::new();
    for Resolved { config, up_ar, down_ar, down_resource } in resolved {
        let mut up_wc = watcher::Config::default().page_size(LIST_PAGE);
        if let Some(sel) = &config.label_selector {
            up_wc = up_wc.labels(sel);
        }
        let up_writer = reflector::store::Writer::new(up_ar.clone());
        let up_store = up_writer.as_reader();
        let up_api: Api<DynamicObject> = Api::all_with(up.clone(), &up_ar);
        let up_stream = watcher::watcher(up_api, up_wc)
            .backoff(reconnect::backoff())
            .modify(move |o| {
                if many_workspaces {
                    qualify_by_workspace(o);
                }
                compact_managed_fields(o);
            })
            .reflect(up_writer);

        let down_writer = reflector::store::Writer::new(down_ar.clone());
        let down_store = down_writer.as_reader();
        let down_api: Api<DynamicObject> = Api::all_with(down.clone(), &down_ar);
        let down_stream = watcher::watcher(down_api, watcher::Config::default().page_size(LIST_PAGE).labels(&owned))
            .backoff(reconnect::backoff())
            .modify(|o| {
                strip_managed_fields(o);
                pack(o);
            })
            .reflect(down_writer);
        streams.push((up_stream.boxed(), down_stream.boxed()));
        watched.push(Watched { config, up_ar, down_ar, down_resource, up_store, down_store });
    }
    (watched, streams)
}

/// Drives the reflectors: each event queues the upstream key it concerns.
pub fn spawn_reflectors(
    controller: &Arc<Controller>,
    streams: Vec<(EventStream, EventStream)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (index, (mut up_stream, mut down_stream)) in streams.into_iter().enumerate() {
        let c = Arc::clone(controller);
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = up_stream.next().await {
                c.on_upstream_event(index, ev);
            }
        }));
        let c = Arc::clone(controller);
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = down_stream.next().await {
                c.on_downstream_event(index, ev);
            }
        }));
    }
    tasks
}

/// The key of an upstream object.
pub fn up_key(index: usize, obj: &DynamicObject) -> WorkKey {
    WorkKey::Object(ObjectKey { resource: index, namespace: obj.metadata.namespace.clone(), name: obj.name_any() })
}

/// The key of the upstream object a downstream copy stands for.
pub fn down_key(index: usize, obj: &DynamicObject) -> WorkKey {
    let ns = annotation(obj, UPSTREAM_NAMESPACE_ANNOTATION).or_else(|| obj.metadata.namespace.clone());
    let ns = match (annotation(obj, workspaces::UPSTREAM_CLUSTER_ANNOTATION), ns) {
        (Some(cluster), Some(ns)) => Some(workspaces::qualify_namespace(&cluster, &ns)),
        (_, ns) => ns,
    };
    WorkKey::Object(ObjectKey { resource: index, namespace: ns, name: obj.name_any() })
}

impl Controller {
    fn on_upstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
        match ev {
            Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => {
                self.reconnected(self.connectivity.up(true));
                if self.selected(w, &o) || upstream::has_finalizer(&o) {
                    self.queue.add(up_key(index, &o));
                }
            }
            Ok(Event::InitDone) => {
                self.reconnected(self.connectivity.up(true));
                // After a re-list, deletes that happened while the watch was down show up
                // only as absences: look at every owned copy again.
                if self.health.not_ready_reason().is_none() {
                    for d in w.down_store.state() {
                        self.queue.add(down_key(index, &d));
                    }
                }
            }
            Ok(Event::Init) => {}
            Err(e) => {
                if self.connectivity.up(false) {
                    warn!(kind = %w.config.kind, side = "upstream", error = %e, "watch failed; retrying");
                }
            }
        }
    }

    fn on_downstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
        match ev {
            // The echo of downsync's own write: nothing to look at, and checked before any
            // JSON work (about half of all downstream events during a sync are these).
            Ok(Event::Apply(o)) if self.is_echo(w, &o) => self.reconnected(self.connectivity.down(true)),
            Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => {
                self.reconnected(self.connectivity.down(true));
                self.queue.add(down_key(index, &o));
            }
            Ok(Event::Init | Event::InitDone) => self.reconnected(self.connectivity.down(true)),
            Err(e) => {
                if self.connectivity.down(false) {
                    warn!(kind = %w.config.kind, side = "downstream", error = %e, "watch failed; retrying");
                }
            }
        }
    }

    /// Whether a downstream object is exactly what downsync last wrote (its resourceVersion is
    /// the one the write returned).
    fn is_echo(&self, w: &Watched, o: &DynamicObject) -> bool {
        let Some(rv) = o.metadata.resource_version.as_deref() else { return false };
        let key = crate::sync::ObjectKey::new(&w.down_resource, o.metadata.namespace.as_deref(), &o.name_any());
        self.syncer.state().has_resource_version(&key, rv)
    }

    fn reconnected(&self, changed: bool) {
        if changed {
            self.retry_everything_now();
        }
    }

    /// Waits until every reflector has listed once.
    pub(super) async fn wait_stores(&self) {
        for w in &self.watched {
            // A dropped writer means the reflector task ended: nothing more will come.
            let _ = w.up_store.wait_until_ready().await;
            let _ = w.down_store.wait_until_ready().await;
        }
    }

    /// Every selected upstream object and every owned downstream copy.
    pub(super) fn all_keys(&self) -> HashSet<WorkKey> {
        let mut keys = HashSet::new();
        for (i, w) in self.watched.iter().enumerate() {
            keys.extend(w.up_store.state().iter().filter(|o| self.selected(w, o)).map(|o| up_key(i, o)));
            keys.extend(w.down_store.state().iter().map(|o| down_key(i, o)));
        }
        keys
    }

    /// The keys of the kinds whose rules changed: a swap of a Deployment rule revisits only
    /// Deployments.
    pub(super) fn keys_of_kinds(&self, kinds: &HashSet<usize>) -> HashSet<WorkKey> {
        self.all_keys().into_iter().filter(|k| matches!(k, WorkKey::Object(o) if kinds.contains(&o.resource))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_deployment() -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}, "resourceVersion": "7"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"replicas": 2},
        }))
        .expect("a deployment")
    }

    #[test]
    fn a_packed_object_reads_back_as_it_was() {
        let ar = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        let plain = mk_deployment();
        let mut packed = mk_deployment();
        pack(&mut packed);
        assert!(packed.data.is_string(), "the body is kept as text");
        pack(&mut packed);
        assert_eq!(body(&packed), body(&plain), "packing twice is packing once");
        let value = super::super::reconcile::to_value(&packed, &ar);
        assert_eq!(value, super::super::reconcile::to_value(&plain, &ar));
        assert_eq!(value["spec"]["replicas"], 2);
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        assert_eq!(value["kind"], "Deployment");
        assert_eq!(body(&packed)["status"], json!({"replicas": 2}));
        assert_eq!(packed.metadata.labels, None, "labels are packed");
        assert_eq!(value["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(body(&packed).get("metadata"), None, "the packed metadata is not part of the body");
    }

    #[test]
    fn a_packed_downstream_copy_still_names_its_upstream_namespace() {
        let ar = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        let mut copy = mk_deployment();
        copy.metadata.namespace = Some("tenant-a".into());
        copy.metadata.annotations =
            Some([(UPSTREAM_NAMESPACE_ANNOTATION.to_string(), "a".to_string()), ("note".into(), String::new())].into());
        copy.metadata.labels = Some(Default::default());
        let plain = copy.clone();
        pack(&mut copy);
        assert_eq!(copy.metadata.annotations, None, "annotations are packed");
        assert_eq!(annotation(&copy, UPSTREAM_NAMESPACE_ANNOTATION).as_deref(), Some("a"));
        assert_eq!(annotation(&copy, "absent"), None);
        assert_eq!(annotation(&plain, UPSTREAM_NAMESPACE_ANNOTATION).as_deref(), Some("a"));
        let WorkKey::Object(key) = down_key(0, &copy) else { panic!("an object key") };
        assert_eq!(key.namespace.as_deref(), Some("a"));
        let value = super::super::reconcile::to_value(&copy, &ar);
        assert_eq!(value, super::super::reconcile::to_value(&plain, &ar));
        assert_eq!(value["metadata"]["labels"], json!({}), "an empty map stays an empty map");
        assert_eq!(value["metadata"]["annotations"]["note"], "");
    }
}
