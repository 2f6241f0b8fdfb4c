//! The sync loop of `downsync run`: reflectors on both sides feed a keyed work queue; workers
//! sync each upstream object into the downstream cluster, delete the copies of objects gone
//! upstream, and keep the optional upstream finalizer and status in step.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams};
use kube::discovery::Scope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::config::{ResourceConfig, RunConfig};
use super::http::{self, Health};
use super::metrics::SyncMetrics;
use crate::kube::KubeDownstream;
use crate::kube::clients::{self, Connected};
use crate::kube::errors::classify;
use crate::kube::upstream::{self, Upstream};
use crate::plugin::{Metrics, PluginEngine, PluginRegistry, PluginSet, Reloader, WatchConfig, WatchHandle};
use crate::sync::error::ApiError;
use crate::sync::mapping::{self, NAMESPACE_LOCATOR_ANNOTATION, NamespaceMapping, UPSTREAM_NAMESPACE_ANNOTATION};
use crate::sync::ownership::{self, MANAGED_BY_LABEL, TARGET_LABEL};
use crate::sync::{ObjectKey, Operation, RateLimit, Resource, SyncError, Syncer, WorkQueue};

/// Why the program cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is bad.
    #[error(transparent)]
    Config(#[from] super::config::Error),
    /// A cluster cannot be reached or its kubeconfig loaded.
    #[error(transparent)]
    Connect(#[from] clients::Error),
    /// The metrics endpoint cannot be served.
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The plugins cannot be loaded.
    #[error("pluginsDir: {0}")]
    Plugins(Box<crate::plugin::Error>),
    /// A configured resource is not served, or not readable, on one side.
    #[error("resources[{index}] {resource}: {side} cluster: {message}")]
    Resource {
        /// Position in the config's `resources`.
        index: usize,
        /// `Kind (apiVersion)`.
        resource: String,
        /// `upstream` or `downstream`.
        side: &'static str,
        /// What went wrong and what to do.
        message: String,
    },
}

impl From<crate::plugin::Error> for Error {
    fn from(e: crate::plugin::Error) -> Self {
        Self::Plugins(Box::new(e))
    }
}

/// Result of running.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of one run that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit after the initial sync.
    pub once: bool,
    /// This process's name in Events (the pod name).
    pub instance: Option<String>,
}

/// What a run did, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Objects whose initial sync succeeded.
    pub synced: u64,
    /// Objects whose initial sync failed.
    pub failed: u64,
}

/// A queue key: one upstream object, by its upstream coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WorkKey {
    resource: usize,
    namespace: Option<String>,
    name: String,
}

/// One configured kind, resolved on both sides, with its reflector stores.
struct Watched {
    config: ResourceConfig,
    up_ar: ApiResource,
    down_ar: ApiResource,
    down_resource: Resource,
    up_store: Store<DynamicObject>,
    down_store: Store<DynamicObject>,
}

/// What a reconcile asks of the queue.
enum Step {
    Done,
    /// Look again after this long (a deletion in progress, a grace period).
    After(Duration),
    /// Failed; retry with backoff.
    Retry,
    /// Failed on bad input; the next change of the object brings it back.
    Park,
}

type RuleSyncer = Syncer<KubeDownstream, Arc<PluginRegistry>>;

struct Controller {
    config: RunConfig,
    watched: Vec<Watched>,
    syncer: RuleSyncer,
    upstream: Upstream,
    down_client: Client,
    queue: WorkQueue<WorkKey>,
    metrics: SyncMetrics,
    health: Arc<Health>,
    /// Downstream namespaces known to exist.
    namespaces: Mutex<HashSet<String>>,
    started: Instant,
    /// Keys not yet synced once since startup.
    initial_pending: Mutex<HashSet<WorkKey>>,
    initial_total: AtomicU64,
    initial_failed: AtomicU64,
    /// Owned downstream objects that had no upstream object at startup: deleted only after
    /// the grace period.
    startup_orphans: Mutex<HashSet<WorkKey>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Sets of keys, updated in single calls: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Connects, loads the plugins, starts the reflectors and the workers, and runs until
/// `shutdown` completes (or, with `once`, until the initial sync is done).
pub async fn run(
    config: RunConfig,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary> {
    config.validate()?;
    let timeout = Duration::from_secs(config.connect_timeout_seconds);
    let (up, down) = tokio::try_join!(
        clients::connect("upstream", &config.upstream, timeout),
        clients::connect("downstream", &config.downstream, timeout)
    )?;
    info!(upstream = %up.url, upstream_version = %up.version, downstream = %down.url,
        downstream_version = %down.version, "connected");

    let mut registry = Registry::default();
    let metrics = SyncMetrics::default();
    metrics.register(&mut registry);
    let plugin_metrics = Metrics::default();
    plugin_metrics.register(&mut registry);
    let rules = Arc::new(PluginRegistry::new(PluginSet::default(), plugin_metrics));
    let (reloader, _watch) = start_plugins(&config, &rules)?;

    let resolved = resolve_all(&config, &up, &down).await?;
    let (watched, streams) = reflectors(&config, resolved, &up.client, &down.client);
    let health = Arc::new(Health::new(registry, reloader.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = match config.metrics_addr {
        Some(addr) => {
            let mut rx = stop_rx.clone();
            let (bound, task) = http::serve(addr, Arc::clone(&health), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await?;
            info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            Some(task)
        }
        None => None,
    };

    let syncer = Syncer::new(
        KubeDownstream::new(down.client.clone()),
        Arc::clone(&rules),
        config.sync.clone(),
        crate::sync::StateCache::new(),
    );
    let controller = Arc::new(Controller {
        upstream: Upstream::new(up.client.clone(), "downsync", opts.instance.clone()),
        down_client: down.client.clone(),
        queue: WorkQueue::new(RateLimit::default()),
        metrics,
        health,
        namespaces: Mutex::default(),
        started: Instant::now(),
        initial_pending: Mutex::default(),
        initial_total: AtomicU64::new(0),
        initial_failed: AtomicU64::new(0),
        startup_orphans: Mutex::default(),
        watched,
        syncer,
        config,
    });
    let reflectors = spawn_reflectors(&controller, streams);

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = controller.wait_stores() => {}
        () = &mut shutdown => {
            info!("stopping before the caches filled");
            let _ = stop_tx.send(true);
            return Ok(Summary::default());
        }
    }
    controller.enqueue_initial();

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..controller.config.workers {
        let c = Arc::clone(&controller);
        workers.spawn(async move { c.work().await });
    }
    let background = [
        tokio::spawn(Arc::clone(&controller).report_progress()),
        tokio::spawn(Arc::clone(&controller).resync_loop()),
        tokio::spawn(Arc::clone(&controller).watch_rules(Arc::clone(&rules))),
    ];

    if opts.once {
        tokio::select! {
            () = controller.wait_initial() => info!("initial sync done; exiting (--once)"),
            () = &mut shutdown => info!("shutdown requested"),
        }
    } else {
        shutdown.await;
        info!("shutdown requested; finishing the syncs in flight");
    }
    controller.queue.shut_down();
    while workers.join_next().await.is_some() {}
    for t in background.into_iter().chain(reflectors) {
        t.abort();
    }
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = s.await;
    }
    let failed = controller.initial_failed.load(Ordering::Relaxed);
    let total = controller.initial_total.load(Ordering::Relaxed);
    let pending = lock(&controller.initial_pending).len() as u64;
    info!("stopped");
    Ok(Summary { synced: total.saturating_sub(failed + pending), failed })
}

fn start_plugins(
    config: &RunConfig,
    rules: &Arc<PluginRegistry>,
) -> Result<(Option<Arc<Reloader>>, Option<WatchHandle>)> {
    let Some(dir) = &config.plugins_dir else { return Ok((None, None)) };
    let engine = PluginEngine::new(config.engine.clone())?;
    let reloader = Reloader::new(engine, dir, config.registry_config(), Arc::clone(rules));
    // A short debounce: a swap is one rename (or one ConfigMap `..data` flip), so there is
    // little to coalesce, and operators expect to see it at once.
    let handle = reloader.watch(WatchConfig { debounce: Duration::from_millis(50), ..WatchConfig::default() })?;
    for s in reloader.status() {
        match (&s.digest, &s.last_error) {
            (Some(d), _) => info!(plugin = %s.name, file = %s.file.display(), digest = %d, "plugin loaded"),
            (None, Some(e)) => warn!(plugin = %s.name, file = %s.file.display(), error = %e, "plugin refused"),
            (None, None) => {}
        }
    }
    Ok((Some(reloader), Some(handle)))
}

async fn resolve_one(client: &Client, gvk: &GroupVersionKind) -> std::result::Result<(ApiResource, bool), String> {
    match kube::discovery::pinned_kind(client, gvk).await {
        Ok((ar, caps)) => Ok((ar, caps.scope == Scope::Namespaced)),
        Err(kube::Error::Discovery(_)) => Err("not served; install its CRD or fix apiVersion/kind".to_string()),
        Err(e) => Err(match classify(e) {
            ApiError::NotFound => "not served; install its CRD or fix apiVersion/kind".to_string(),
            other => format!("discovery failed: {other}"),
        }),
    }
}

/// Resolves every configured kind on both sides and checks downsync may list it there (a bad
/// label selector or missing RBAC fails here, with the resource named, not later in a loop).
pub(crate) async fn resolve_all(
    config: &RunConfig,
    up: &Connected,
    down: &Connected,
) -> Result<Vec<(ResourceConfig, ApiResource, ApiResource, Resource)>> {
    let mut out = Vec::new();
    for (index, r) in config.resources.iter().enumerate() {
        let err =
            |side: &'static str, message: String| Error::Resource { index, resource: r.describe(), side, message };
        let (group, version) = r.api_version.rsplit_once('/').unwrap_or(("", r.api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let (up_ar, up_namespaced) = resolve_one(&up.client, &gvk).await.map_err(|m| err("upstream", m))?;
        let (down_ar, down_namespaced) = resolve_one(&down.client, &gvk).await.map_err(|m| err("downstream", m))?;
        if up_namespaced != down_namespaced {
            return Err(err("downstream", "namespaced on one side and cluster-scoped on the other".into()));
        }
        let mut lp = ListParams::default().limit(1);
        if let Some(sel) = &r.label_selector {
            lp = lp.labels(sel);
        }
        let up_api: Api<DynamicObject> = Api::all_with(up.client.clone(), &up_ar);
        up_api.list_metadata(&lp).await.map_err(|e| {
            err("upstream", format!("cannot list (labelSelector {:?}): {}", r.label_selector, classify(e)))
        })?;
        let owned = ListParams::default().limit(1).labels(&ownership::owned_selector(&config.sync.ownership));
        let down_api: Api<DynamicObject> = Api::all_with(down.client.clone(), &down_ar);
        down_api.list_metadata(&owned).await.map_err(|e| err("downstream", format!("cannot list: {}", classify(e))))?;
        let down_resource = Resource {
            gvr: crate::sync::Gvr {
                group: down_ar.group.clone(),
                version: down_ar.version.clone(),
                resource: down_ar.plural.clone(),
            },
            kind: down_ar.kind.clone(),
            namespaced: down_namespaced,
        };
        out.push((r.clone(), up_ar, down_ar, down_resource));
    }
    Ok(out)
}

fn strip_managed_fields(o: &mut DynamicObject) {
    // The largest parts of most objects, and never read: keeping them would double the cache.
    // (kubectl's last-applied record is dropped from the desired object anyway.)
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(mapping::LAST_APPLIED_ANNOTATION);
    }
}

type EventStream = futures::stream::BoxStream<'static, std::result::Result<Event<DynamicObject>, watcher::Error>>;

/// Builds a reflector per kind and side: the stores, and the event streams that fill them.
fn reflectors(
    config: &RunConfig,
    resolved: Vec<(ResourceConfig, ApiResource, ApiResource, Resource)>,
    up: &Client,
    down: &Client,
) -> (Vec<Watched>, Vec<(EventStream, EventStream)>) {
    let owned = ownership::owned_selector(&config.sync.ownership);
    let mut streams = Vec::new();
    let mut watched = Vec::new();
    for (config, up_ar, down_ar, down_resource) in resolved {
        let mut up_wc = watcher::Config::default();
        if let Some(sel) = &config.label_selector {
            up_wc = up_wc.labels(sel);
        }
        let up_writer = reflector::store::Writer::new(up_ar.clone());
        let up_store = up_writer.as_reader();
        let up_api: Api<DynamicObject> = Api::all_with(up.clone(), &up_ar);
        let up_stream =
            watcher::watcher(up_api, up_wc).default_backoff().modify(strip_managed_fields).reflect(up_writer);

        let down_writer = reflector::store::Writer::new(down_ar.clone());
        let down_store = down_writer.as_reader();
        let down_api: Api<DynamicObject> = Api::all_with(down.clone(), &down_ar);
        let down_stream = watcher::watcher(down_api, watcher::Config::default().labels(&owned))
            .default_backoff()
            .modify(strip_managed_fields)
            .reflect(down_writer);
        streams.push((up_stream.boxed(), down_stream.boxed()));
        watched.push(Watched { config, up_ar, down_ar, down_resource, up_store, down_store });
    }
    (watched, streams)
}

/// Drives the reflectors: each event queues the upstream key it concerns.
fn spawn_reflectors(
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

/// The object as JSON, with its apiVersion and kind: list and watch items often lack them.
fn to_value(obj: &DynamicObject, ar: &ApiResource) -> Value {
    // A DynamicObject is a JSON map with typed metadata; it always serialises.
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        o.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    v
}

impl Controller {
    fn kind(&self, key: &WorkKey) -> &str {
        self.watched.get(key.resource).map_or("?", |w| w.config.kind.as_str())
    }

    fn target(&self) -> &str {
        &self.config.sync.ownership.target
    }

    fn mapping(&self) -> &NamespaceMapping {
        &self.config.namespace_mapping
    }

    fn selected(&self, w: &Watched, obj: &DynamicObject) -> bool {
        self.config.selects(&w.config, obj.metadata.namespace.as_deref(), &obj.name_any())
    }

    fn up_key(index: usize, obj: &DynamicObject) -> WorkKey {
        WorkKey { resource: index, namespace: obj.metadata.namespace.clone(), name: obj.name_any() }
    }

    fn down_key(index: usize, obj: &DynamicObject) -> WorkKey {
        let ns = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(UPSTREAM_NAMESPACE_ANNOTATION))
            .cloned()
            .or_else(|| obj.metadata.namespace.clone());
        WorkKey { resource: index, namespace: ns, name: obj.name_any() }
    }

    fn on_upstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
        match ev {
            Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => {
                if self.selected(w, &o) || upstream::has_finalizer(&o) {
                    self.queue.add(Self::up_key(index, &o));
                }
            }
            Ok(Event::InitDone) => {
                // After a re-list, deletes that happened while the watch was down show up
                // only as absences: look at every owned copy again.
                if self.health.not_ready_reason().is_none() {
                    for d in w.down_store.state() {
                        self.queue.add(Self::down_key(index, &d));
                    }
                }
            }
            Ok(Event::Init) => {}
            Err(e) => warn!(kind = %w.config.kind, side = "upstream", error = %e, "watch failed; retrying"),
        }
    }

    fn on_downstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
        match ev {
            Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => self.queue.add(Self::down_key(index, &o)),
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => warn!(kind = %w.config.kind, side = "downstream", error = %e, "watch failed; retrying"),
        }
    }

    async fn wait_stores(&self) {
        for w in &self.watched {
            // A dropped writer means the reflector task ended: nothing more will come.
            let _ = w.up_store.wait_until_ready().await;
            let _ = w.down_store.wait_until_ready().await;
        }
    }

    /// Every selected upstream object and every owned downstream copy.
    fn all_keys(&self) -> HashSet<WorkKey> {
        let mut keys = HashSet::new();
        for (i, w) in self.watched.iter().enumerate() {
            keys.extend(w.up_store.state().iter().filter(|o| self.selected(w, o)).map(|o| Self::up_key(i, o)));
            keys.extend(w.down_store.state().iter().map(|o| Self::down_key(i, o)));
        }
        keys
    }

    fn enqueue_initial(&self) {
        let keys = self.all_keys();
        let orphans: HashSet<WorkKey> = keys.iter().filter(|k| self.upstream_of(k).is_none()).cloned().collect();
        if !orphans.is_empty() {
            info!(
                count = orphans.len(),
                grace_seconds = self.config.orphan_grace_seconds,
                "owned downstream objects without an upstream object; deleting them after the grace period"
            );
        }
        *lock(&self.startup_orphans) = orphans;
        self.initial_total.store(keys.len() as u64, Ordering::Relaxed);
        info!(objects = keys.len(), kinds = self.watched.len(), "initial sync started");
        *lock(&self.initial_pending) = keys.clone();
        self.health.set_progress(0, keys.len() as u64);
        self.metrics.set_initial(0, keys.len() as u64);
        if keys.is_empty() {
            self.health.set_initial_done();
        }
        for k in keys {
            self.queue.add(k);
        }
    }

    async fn wait_initial(&self) {
        while self.health.not_ready_reason().is_some() && !lock(&self.initial_pending).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn initial_done_with(&self, key: &WorkKey, ok: bool) {
        let mut pending = lock(&self.initial_pending);
        if pending.is_empty() || !pending.remove(key) {
            return;
        }
        if !ok {
            self.initial_failed.fetch_add(1, Ordering::Relaxed);
        }
        let total = self.initial_total.load(Ordering::Relaxed);
        let synced = total - pending.len() as u64;
        self.health.set_progress(synced, total);
        self.metrics.set_initial(synced, total);
        if pending.is_empty() {
            let failed = self.initial_failed.load(Ordering::Relaxed);
            let secs = self.started.elapsed().as_secs_f64();
            info!(objects = total, failed, seconds = format!("{secs:.1}"), "initial sync done");
            self.health.set_initial_done();
        }
    }

    async fn report_progress(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.metrics.set_queue_depth(self.queue.len());
            let pending = lock(&self.initial_pending).len() as u64;
            if pending > 0 {
                let total = self.initial_total.load(Ordering::Relaxed);
                info!("initial sync: {}/{total} objects", total - pending);
            }
        }
    }

    async fn resync_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.resync());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tick.tick().await;
            let keys = self.all_keys();
            debug!(objects = keys.len(), "periodic resync");
            for k in keys {
                self.queue.add(k);
            }
        }
    }

    /// A plugin swap changes the rules' fingerprint: every object is looked at again, so the
    /// new behaviour shows without waiting for the next change or resync.
    async fn watch_rules(self: Arc<Self>, rules: Arc<PluginRegistry>) {
        let mut last = rules.fingerprint();
        // Cheap (a snapshot's string); often enough that a swap shows within a few ms.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = rules.fingerprint();
            if now != last {
                last = now;
                let keys = self.all_keys();
                info!(objects = keys.len(), "rules changed; syncing every object again");
                for k in keys {
                    self.queue.add(k);
                }
            }
        }
    }

    async fn work(self: Arc<Self>) {
        while let Some(key) = self.queue.next().await {
            let step = self.reconcile(&key).await;
            let ok = matches!(step, Step::Done | Step::After(_));
            match step {
                Step::Done => self.queue.forget(&key),
                Step::After(d) => {
                    self.queue.forget(&key);
                    self.queue.add_after(key.clone(), d);
                }
                Step::Retry => {
                    self.metrics.retried(self.kind(&key));
                    let delay = self.queue.add_rate_limited(key.clone());
                    debug!(kind = self.kind(&key), name = %key.name, delay_ms = delay.as_millis() as u64, "retrying");
                }
                Step::Park => self.queue.forget(&key),
            }
            self.queue.done(&key);
            self.initial_done_with(&key, ok);
            self.metrics.set_queue_depth(self.queue.len());
        }
    }

    fn upstream_of(&self, key: &WorkKey) -> Option<Arc<DynamicObject>> {
        let w = self.watched.get(key.resource)?;
        let mut r = ObjectRef::new_with(&key.name, w.up_ar.clone());
        if let Some(ns) = &key.namespace {
            r = r.within(ns);
        }
        w.up_store.get(&r)
    }

    fn downstream_ns(&self, key: &WorkKey) -> Option<String> {
        key.namespace.as_deref().map(|ns| self.mapping().map(self.target(), ns))
    }

    fn downstream_of(&self, key: &WorkKey) -> Option<Arc<DynamicObject>> {
        let w = self.watched.get(key.resource)?;
        let mut r = ObjectRef::new_with(&key.name, w.down_ar.clone());
        if let Some(ns) = self.downstream_ns(key) {
            r = r.within(&ns);
        }
        w.down_store.get(&r)
    }

    async fn reconcile(&self, key: &WorkKey) -> Step {
        let Some(w) = self.watched.get(key.resource) else { return Step::Done };
        let up = self.upstream_of(key);
        let down = self.downstream_of(key);
        match up {
            Some(obj) if self.selected(w, &obj) && obj.metadata.deletion_timestamp.is_none() => {
                self.sync(w, key, &obj, down.as_deref()).await
            }
            up => self.remove(w, key, up.as_deref(), down.as_deref()).await,
        }
    }

    async fn warn_upstream(&self, w: &Watched, obj: &DynamicObject, reason: &str, note: String) {
        if let Err(e) = self.upstream.warn(&w.up_ar, obj, reason, note).await {
            debug!(kind = %w.config.kind, name = %obj.name_any(), error = %e, "cannot publish an upstream event");
        }
    }

    async fn sync(&self, w: &Watched, key: &WorkKey, up: &DynamicObject, down: Option<&DynamicObject>) -> Step {
        let kind = w.config.kind.as_str();
        if self.config.upstream_finalizer
            && let Err(e) = self.upstream.add_finalizer(&w.up_ar, up).await
        {
            warn!(kind, object = %key.name, error = %e, "cannot add the upstream finalizer");
            self.metrics.record_failure(kind, "finalize");
            return Step::Retry;
        }
        let desired = match mapping::prepare_desired(to_value(up, &w.up_ar), self.mapping(), self.target()) {
            Ok(d) => d,
            Err(e) => {
                warn!(kind, object = %key.name, error = %e, "cannot place the object downstream");
                self.metrics.record_failure(kind, "skipped");
                self.warn_upstream(w, up, "InvalidObject", e.to_string()).await;
                return Step::Park;
            }
        };
        if let (Some(ns), Some(up_ns)) = (self.downstream_ns(key), key.namespace.as_deref())
            && let Err(e) = self.ensure_namespace(&ns, up_ns).await
        {
            warn!(kind, namespace = %ns, error = %e, "cannot create the downstream namespace");
            self.metrics.record_failure(kind, "namespace");
            return Step::Retry;
        }
        let started = Instant::now();
        let result = self.syncer.apply(desired, Some(down.map(|d| to_value(d, &w.down_ar)))).await;
        self.metrics.record(kind, &result, started.elapsed().as_secs_f64());
        if let Some(e) = &result.error {
            if result.key.is_none() {
                // The syncer logs failures of objects it could key; this one it could not.
                warn!(kind, object = %key.name, namespace = key.namespace.as_deref().unwrap_or(""), error = %e, "sync failed");
            }
            let (reason, step) = match e {
                SyncError::InvalidObject { .. } | SyncError::Preservation(_) => ("InvalidObject", Step::Park),
                SyncError::Immutable { .. } => ("ImmutableFieldChanged", Step::Park),
                SyncError::NotOwned { .. } => ("NameConflict", Step::Retry),
                SyncError::Rule(_) => ("RuleFailed", Step::Retry),
                // The API refused the object itself: retrying the same bytes cannot help.
                SyncError::Api { source: ApiError::Invalid { .. }, .. } => ("InvalidObject", Step::Park),
                SyncError::Api { source: ApiError::NotFound, .. } => {
                    // Perhaps the downstream namespace went away under us.
                    if let Some(ns) = self.downstream_ns(key) {
                        lock(&self.namespaces).remove(&ns);
                    }
                    ("SyncFailed", Step::Retry)
                }
                _ => ("SyncFailed", Step::Retry),
            };
            self.warn_upstream(w, up, reason, e.to_string()).await;
            return match result.retry_after {
                Some(d) if matches!(step, Step::Retry) => Step::After(d),
                _ => step,
            };
        }
        if self.config.status_upsync
            && let Some(d) = down
            && let Some(status) = d.data.get("status")
            && up.data.get("status") != Some(status)
            && let Err(e) = self.upstream.patch_status(&w.up_ar, up, status).await
        {
            warn!(kind, object = %key.name, error = %e, "cannot copy the status upstream");
            self.metrics.record_failure(kind, "upsync");
            return Step::Retry;
        }
        match result.retry_after {
            Some(d) => Step::After(d),
            None => Step::Done,
        }
    }

    async fn remove(
        &self,
        w: &Watched,
        key: &WorkKey,
        up: Option<&DynamicObject>,
        down: Option<&DynamicObject>,
    ) -> Step {
        let kind = w.config.kind.as_str();
        let holds_finalizer = self.config.upstream_finalizer && up.is_some_and(upstream::has_finalizer);
        if down.is_some() || holds_finalizer {
            if up.is_none() && lock(&self.startup_orphans).contains(key) {
                let grace = self.config.orphan_grace();
                let waited = self.started.elapsed();
                if waited < grace {
                    return Step::After(grace - waited);
                }
            }
            let okey = ObjectKey::new(&w.down_resource, self.downstream_ns(key).as_deref(), &key.name);
            // With a finalizer to release, absence in the cache is confirmed with a read: the
            // cache may not have seen a copy created moments ago.
            let cached = down.map(|d| Some(to_value(d, &w.down_ar)));
            let started = Instant::now();
            let result = self.syncer.delete(&okey, cached).await;
            self.metrics.record(kind, &result, started.elapsed().as_secs_f64());
            if let Some(e) = &result.error {
                if let Some(up) = up {
                    self.warn_upstream(w, up, "DeleteFailed", e.to_string()).await;
                }
                return match e {
                    // Not ours: never touched; nothing holds the upstream object on its account.
                    SyncError::NotOwned { .. } => self.release(w, key, up).await,
                    _ => Step::Retry,
                };
            }
            if result.operation == Operation::Deleting {
                return Step::After(result.retry_after.unwrap_or(Duration::from_secs(2)));
            }
            lock(&self.startup_orphans).remove(key);
        }
        self.release(w, key, up).await
    }

    /// Removes the upstream finalizer, if downsync put one there.
    async fn release(&self, w: &Watched, key: &WorkKey, up: Option<&DynamicObject>) -> Step {
        if !self.config.upstream_finalizer {
            return Step::Done;
        }
        let fetched;
        let obj = match up {
            Some(o) => o,
            None => {
                // Gone from the cache: deleted, or no longer matching the label selector.
                let api: Api<DynamicObject> = match &key.namespace {
                    Some(ns) => Api::namespaced_with(self.upstream.client().clone(), ns, &w.up_ar),
                    None => Api::all_with(self.upstream.client().clone(), &w.up_ar),
                };
                match api.get_opt(&key.name).await {
                    Ok(Some(o)) => {
                        fetched = o;
                        &fetched
                    }
                    Ok(None) => return Step::Done,
                    Err(e) => {
                        warn!(kind = %w.config.kind, object = %key.name, error = %e, "cannot read the upstream object");
                        return Step::Retry;
                    }
                }
            }
        };
        match self.upstream.remove_finalizer(&w.up_ar, obj).await {
            Ok(()) => Step::Done,
            Err(e) => {
                warn!(kind = %w.config.kind, object = %key.name, error = %e, "cannot remove the upstream finalizer");
                self.metrics.record_failure(&w.config.kind, "finalize");
                Step::Retry
            }
        }
    }

    async fn ensure_namespace(&self, name: &str, upstream_ns: &str) -> std::result::Result<(), ApiError> {
        if lock(&self.namespaces).contains(name) {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.down_client.clone());
        if api.get_opt(name).await.map_err(classify)?.is_none() {
            let o = &self.config.sync.ownership;
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(
                        [
                            (MANAGED_BY_LABEL.to_string(), o.identity.clone()),
                            (TARGET_LABEL.to_string(), o.target.clone()),
                        ]
                        .into(),
                    ),
                    annotations: Some(
                        [(NAMESPACE_LOCATOR_ANNOTATION.to_string(), NamespaceMapping::locator(&o.target, upstream_ns))]
                            .into(),
                    ),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match api.create(&PostParams::default(), &ns).await.map_err(classify) {
                Ok(_) => info!(namespace = %name, upstream_namespace = %upstream_ns, "created downstream namespace"),
                Err(ApiError::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
        lock(&self.namespaces).insert(name.to_string());
        Ok(())
    }
}
