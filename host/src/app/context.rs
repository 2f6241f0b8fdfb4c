//! The context every reconcile shares: the configuration, the watched kinds with their caches,
//! the syncer, the clients, the queue, the metrics and the bookkeeping of the initial sync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};

use super::cache::{Cached, ObjectCache};
use super::config::{ResourceConfig, RunConfig};
use super::connectivity::Connectivity;
use super::ha::ShardGate;
use super::http::Health;
use super::keys::{UpstreamKey, WorkKey};
use super::metrics::SyncMetrics;
use super::namespaces::Namespaces;
use crate::kube::KubeDownstream;
use crate::kube::upstream::Upstream;
use crate::plugin::PluginRegistry;
use crate::sync::mapping::NamespaceMapping;
use crate::sync::{Resource, Syncer, WorkQueue, ownership};

pub(super) type RuleSyncer = Syncer<KubeDownstream, Arc<PluginRegistry>>;

/// Everything a reconcile needs: the caches, the clients, the syncer, the queue.
pub struct Controller {
    pub(super) config: RunConfig,
    /// One slot per configured kind, in the config's order (a key's `resource` indexes it).
    pub(super) kinds: Vec<KindSlot>,
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
    /// Owned downstream objects that had no upstream object when their kind was first
    /// watched (at start, or when its CRD came): deleted only once the grace period, here
    /// its end, has passed.
    pub(super) startup_orphans: Mutex<HashMap<UpstreamKey, Instant>>,
    /// The last failure reported per key, so that a failure that repeats is logged and
    /// published once per change, not on every retry. Cleared when the key succeeds.
    pub(super) last_failure: Mutex<HashMap<WorkKey, String>>,
    /// Workers running now; `/healthz` fails if it falls below the configured count.
    pub(super) workers_alive: Arc<AtomicUsize>,
    /// The shards this process may write: all of them without HA.
    pub(super) ha: Arc<ShardGate>,
    /// The configured kinds waiting for a side to serve them.
    pub(super) waiting: Waiting,
    /// The upstream serves many kcp workspaces: objects are keyed by workspace too.
    pub(super) many_workspaces: bool,
    /// How each side's watches list (streaming or paged), as the servers answered.
    pub(super) list_modes: crate::kube::lists::ListModes,
}

/// One configured kind, resolved on both sides, with its reflector stores.
#[derive(Debug)]
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
    pub up_store: Arc<ObjectCache>,
    /// Owned downstream objects.
    pub down_store: Arc<ObjectCache>,
}

impl Watched {
    /// The upstream object of a key, from the cache.
    pub fn upstream(&self, key: &UpstreamKey) -> Option<Cached> {
        self.up_store.get(key.namespace.as_deref(), &key.name, &self.up_ar)
    }

    /// Whether the upstream object of a key is cached (no parse).
    pub fn has_upstream(&self, key: &UpstreamKey) -> bool {
        self.up_store.contains(key.namespace.as_deref(), &key.name)
    }

    /// The owned downstream copy in `downstream_ns`, from the cache.
    pub fn downstream(&self, name: &str, downstream_ns: Option<&str>) -> Option<Cached> {
        self.down_store.get(downstream_ns, name, &self.down_ar)
    }
}

/// The configured kinds waiting for a side to serve them, by index.
#[derive(Debug, Default)]
pub struct Waiting {
    pub(super) kinds: Mutex<BTreeMap<usize, String>>,
    pub(super) changed: tokio::sync::Notify,
}

impl Waiting {
    /// One line per waiting kind, for `/readyz?verbose`.
    pub fn describe(&self) -> Vec<String> {
        lock(&self.kinds).values().cloned().collect()
    }

    pub(super) fn indices(&self) -> Vec<usize> {
        lock(&self.kinds).keys().copied().collect()
    }
}

/// One configured kind: watched once it is served on both sides; empty while one side does
/// not serve it (its CRD not installed or not established yet, or deleted since).
#[derive(Debug)]
pub struct KindSlot {
    /// The configuration entry.
    pub config: ResourceConfig,
    watched: RwLock<Option<Arc<Watched>>>,
    /// The task that drives the kind's reflectors, while watched.
    pub(super) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KindSlot {
    /// An empty slot for a configured kind.
    pub fn new(config: ResourceConfig) -> Self {
        Self { config, watched: RwLock::default(), task: Mutex::default() }
    }

    /// The kind's caches, while it is watched.
    pub fn watched(&self) -> Option<Arc<Watched>> {
        self.watched.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Starts (`Some`) or stops (`None`) serving the kind from these caches.
    pub(super) fn set(&self, watched: Option<Arc<Watched>>) {
        *self.watched.write().unwrap_or_else(PoisonError::into_inner) = watched;
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Sets of keys, updated in single calls: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Controller {
    /// The caches of `resources[index]`, while it is watched.
    pub(super) fn watched(&self, index: usize) -> Option<Arc<Watched>> {
        self.kinds.get(index)?.watched()
    }

    /// Every kind watched now, with its index.
    pub(super) fn all_watched(&self) -> Vec<(usize, Arc<Watched>)> {
        self.kinds.iter().enumerate().filter_map(|(i, s)| Some((i, s.watched()?))).collect()
    }

    pub(super) fn kind(&self, key: &WorkKey) -> &str {
        match key {
            WorkKey::Object(k) => self.kinds.get(k.resource).map_or("?", |s| s.config.kind.as_str()),
            WorkKey::Namespace { .. } => "Namespace",
        }
    }

    pub(super) fn target(&self) -> &str {
        &self.config.sync.ownership.target
    }

    /// The shard of a key: by its upstream namespace, and with many kcp workspaces by its
    /// workspace too ([`super::keys::shard_namespace`]).
    pub(super) fn shard_of_key(&self, key: &WorkKey) -> u32 {
        self.ha.shard_of(super::keys::shard_namespace(key))
    }

    pub(super) fn mapping(&self) -> &NamespaceMapping {
        &self.config.namespace_mapping
    }

    /// Whether an upstream object is synced: its resource selects it, and it is not one this
    /// instance wrote (upstream and downstream may be one cluster, into other namespaces).
    pub(super) fn selected(&self, w: &Watched, obj: &DynamicObject) -> bool {
        let stamp = obj.annotations().get(ownership::OWNER_ANNOTATION);
        let ours = stamp.is_some_and(|s| *s == ownership::owner_value(&self.config.sync.ownership));
        let ns = obj.metadata.namespace.as_deref().map(|ns| crate::sync::workspaces::split_namespace(ns).1);
        !ours && self.config.selects(&w.config, ns, &obj.name_any())
    }

    pub(super) fn downstream_ns(&self, key: &UpstreamKey) -> Option<String> {
        key.namespace.as_deref().map(|ns| self.mapping().map(self.target(), ns))
    }

    /// Marks owned copies without an upstream object, found when their kind is first watched,
    /// to wait out the grace period before their delete: a slow or partial upstream list must
    /// not delete what is still wanted.
    pub(super) fn hold_orphans(&self, keys: &HashSet<WorkKey>) -> usize {
        let ends = Instant::now() + self.config.orphan_grace();
        let mut held = lock(&self.startup_orphans);
        let before = held.len();
        for k in keys {
            if let WorkKey::Object(o) = k
                && self.watched(o.resource).is_some_and(|w| !w.has_upstream(o))
            {
                held.insert(o.clone(), ends);
            }
        }
        held.len() - before
    }

    /// How much longer a startup orphan waits before its delete, if it still must.
    pub(super) fn orphan_wait(&self, key: &UpstreamKey) -> Option<Duration> {
        let ends = *lock(&self.startup_orphans).get(key)?;
        let left = ends.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    pub(super) fn orphan_gone(&self, key: &UpstreamKey) {
        lock(&self.startup_orphans).remove(key);
    }

    pub(super) fn upstream_object(&self, key: &WorkKey) -> Option<Cached> {
        match key {
            WorkKey::Object(k) => self.watched(k.resource)?.upstream(k),
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

    /// The cleanup keys of the namespaces downsync created (none when they cannot be listed:
    /// the next look tries again).
    pub(super) async fn created_namespace_keys(&self) -> Vec<WorkKey> {
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
