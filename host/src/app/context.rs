//! The context every reconcile shares: the configuration, the watched kinds with their caches,
//! the syncer, the clients, the queue, the metrics and the bookkeeping of the initial sync.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};

use super::config::{ResourceConfig, RunConfig};
use super::connectivity::Connectivity;
use super::ha::ShardGate;
use super::http::Health;
use super::keys::{ObjectKey, WorkKey};
use super::metrics::SyncMetrics;
use super::namespaces::Namespaces;
use super::packing::annotation;
use crate::kube::KubeDownstream;
use crate::kube::upstream::Upstream;
use crate::plugin::PluginRegistry;
use crate::sync::mapping::NamespaceMapping;
use crate::sync::{Resource, Syncer, WorkQueue, ownership};

pub(super) type RuleSyncer = Syncer<KubeDownstream, Arc<PluginRegistry>>;

/// Everything a reconcile needs: the caches, the clients, the syncer, the queue.
pub struct Controller {
    pub(super) config: RunConfig,
    pub(super) watched: Vec<Watched>,
    pub(super) syncer: RuleSyncer,
    pub(super) upstream: Upstream,
    pub(super) namespaces: Namespaces,
    pub(super) queue: WorkQueue<WorkKey>,
    pub(super) metrics: SyncMetrics,
    pub(super) health: Arc<Health>,
    pub(super) connectivity: Arc<Connectivity>,
    pub(super) started: Instant,
    /// Keys not yet synced once since startup.
    pub(super) initial_pending: Mutex<HashSet<WorkKey>>,
    pub(super) initial_total: AtomicU64,
    pub(super) initial_failed: AtomicU64,
    /// Owned downstream objects that had no upstream object at startup: deleted only after
    /// the grace period.
    pub(super) startup_orphans: Mutex<HashSet<ObjectKey>>,
    /// The last failure reported per key, so that a failure that repeats is logged and
    /// published once per change, not on every retry. Cleared when the key succeeds.
    pub(super) last_failure: Mutex<HashMap<WorkKey, String>>,
    /// Workers running now; `/healthz` fails if it falls below the configured count.
    pub(super) workers_alive: Arc<AtomicUsize>,
    /// The shards this process may write: all of them without HA.
    pub(super) ha: Arc<ShardGate>,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Sets of keys, updated in single calls: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Controller {
    pub(super) fn kind(&self, key: &WorkKey) -> &str {
        match key {
            WorkKey::Object(k) => self.watched.get(k.resource).map_or("?", |w| w.config.kind.as_str()),
            WorkKey::Namespace { .. } => "Namespace",
        }
    }

    pub(super) fn target(&self) -> &str {
        &self.config.sync.ownership.target
    }

    /// The shard of a key: by its upstream namespace.
    pub(super) fn shard_of_key(&self, key: &WorkKey) -> u32 {
        match key {
            WorkKey::Object(k) => self.ha.shard_of(k.namespace.as_deref()),
            WorkKey::Namespace { upstream, .. } => self.ha.shard_of(Some(upstream)),
        }
    }

    pub(super) fn mapping(&self) -> &NamespaceMapping {
        &self.config.namespace_mapping
    }

    /// Whether an upstream object is synced: its resource selects it, and it is not one this
    /// instance wrote (upstream and downstream may be one cluster, into other namespaces).
    pub(super) fn selected(&self, w: &Watched, obj: &DynamicObject) -> bool {
        let stamp = annotation(obj, ownership::OWNER_ANNOTATION);
        let ours = stamp.is_some_and(|s| s == ownership::owner_value(&self.config.sync.ownership));
        let ns = obj.metadata.namespace.as_deref().map(|ns| crate::sync::workspaces::split_namespace(ns).1);
        !ours && self.config.selects(&w.config, ns, &obj.name_any())
    }

    pub(super) fn downstream_ns(&self, key: &ObjectKey) -> Option<String> {
        key.namespace.as_deref().map(|ns| self.mapping().map(self.target(), ns))
    }

    /// How much longer a startup orphan waits before its delete, if it still must.
    pub(super) fn orphan_wait(&self, key: &ObjectKey) -> Option<Duration> {
        if !lock(&self.startup_orphans).contains(key) {
            return None;
        }
        let (grace, waited) = (self.config.orphan_grace(), self.started.elapsed());
        (waited < grace).then(|| grace - waited)
    }

    pub(super) fn orphan_gone(&self, key: &ObjectKey) {
        lock(&self.startup_orphans).remove(key);
    }

    pub(super) fn upstream_object(&self, key: &WorkKey) -> Option<Arc<DynamicObject>> {
        match key {
            WorkKey::Object(k) => self.watched.get(k.resource)?.upstream(k),
            WorkKey::Namespace { .. } => None,
        }
    }

    /// Resets every key's backoff and queues it: called when a lost connection returns, so
    /// that objects that failed during the outage do not wait out a long backoff.
    pub(super) fn retry_everything_now(&self) {
        for k in self.all_keys() {
            self.queue.forget(&k);
            self.queue.add(k);
        }
    }

    /// The cleanup keys of the namespaces downsync created, unless it keeps them (none when
    /// they cannot be listed: the next look tries again).
    pub(super) async fn created_namespace_keys(&self) -> Vec<WorkKey> {
        if self.config.keeps_namespaces() {
            return Vec::new();
        }
        match self.namespaces.created().await {
            Ok(created) => {
                created.into_iter().map(|(downstream, upstream)| WorkKey::Namespace { downstream, upstream }).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the namespaces downsync created");
                Vec::new()
            }
        }
    }
}
