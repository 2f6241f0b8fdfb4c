//! The sync loop of `downsync run`: wires start-up, the triggers and the workers together, and
//! runs until stopped. Workers take keys from the queue, [`reconcile`] them, and hand failures
//! to [`error_policy`]; a worker that panics is kept serving and its key goes back to the queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use kube::ResourceExt;
use kube::api::DynamicObject;
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, warn};

use super::config::RunConfig;
use super::connectivity::Connectivity;
use super::error_policy::{ReconcileError, Step, error_policy, event_reason};
use super::ha::{Coordinator, HaMetrics, HaView, ShardGate, SharedView};
use super::http::{self, Health};
use super::metrics::SyncMetrics;
use super::namespaces::Namespaces;
use super::reconcile::{Action, reconcile};
use super::startup::{connect, plugin_reloader, resolve_all, watch_plugins};
use super::triggers::{self, ObjectKey, Watched, WorkKey};
use crate::kube::KubeDownstream;
use crate::kube::upstream::Upstream;
use crate::plugin::{Metrics, PluginRegistry, PluginSet};
use crate::sync::mapping::NamespaceMapping;
use crate::sync::{RateLimit, Shares, StateCache, Syncer, WorkQueue};

pub use super::startup::{Error, Result};

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

type RuleSyncer = Syncer<KubeDownstream, Arc<PluginRegistry>>;

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
    started: Instant,
    /// Keys not yet synced once since startup.
    initial_pending: Mutex<HashSet<WorkKey>>,
    initial_total: AtomicU64,
    initial_failed: AtomicU64,
    /// Owned downstream objects that had no upstream object at startup: deleted only after
    /// the grace period.
    startup_orphans: Mutex<HashSet<ObjectKey>>,
    /// The last failure reported per key, so that a failure that repeats is logged and
    /// published once per change, not on every retry. Cleared when the key succeeds.
    last_failure: Mutex<HashMap<WorkKey, String>>,
    /// Workers running now; `/healthz` fails if it falls below the configured count.
    workers_alive: Arc<AtomicUsize>,
    /// The shards this process may write: all of them without HA.
    pub(super) ha: Arc<ShardGate>,
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
    if opts.once && config.ha.enabled {
        return Err(super::config::Error::Invalid {
            setting: "ha.enabled".into(),
            message: "--once syncs everything in one process and exits; it cannot run as one of several replicas"
                .into(),
        }
        .into());
    }
    // Bind first: a taken address is a mistake to report before anything else happens.
    let listener = match config.metrics_addr {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let (up, down) = connect(&config).await?;

    let mut registry = Registry::default();
    let metrics = SyncMetrics::default();
    metrics.register(&mut registry);
    let plugin_metrics = Metrics::default().with_journal(config.explain_objects);
    plugin_metrics.register(&mut registry);
    let connectivity = Arc::new(Connectivity::new(&up.url, &down.url));
    connectivity.register(&mut registry);
    super::features::register(&config.feature_gates, &mut registry);
    let ha_metrics = HaMetrics::default();
    if config.ha.enabled {
        ha_metrics.register(&mut registry);
    }
    let identity = config.ha.resolved_identity();
    let ha_view: SharedView = Arc::new(Mutex::new(HaView {
        enabled: config.ha.enabled,
        identity: identity.clone(),
        namespace: if config.ha.enabled { config.ha.resolved_namespace() } else { String::new() },
        shards: if config.ha.enabled { config.ha.shards } else { 1 },
        live_replicas: vec![identity],
        fair_share: 1,
        leases: Vec::new(),
    }));
    let gate = Arc::new(if config.ha.enabled { ShardGate::sharded(config.ha.shards) } else { ShardGate::single() });
    let slots = config.engine.pool_instances as usize;
    let rules = Arc::new(PluginRegistry::new(PluginSet::default(), plugin_metrics).with_call_slots(slots));
    let reloader = plugin_reloader(&config, &rules).await?;
    // Compiling can take long (tens of seconds for an interpreted guest without a cached
    // artifact): it runs while the caches fill, and the first sync waits for it, since syncing
    // without the rules would write what they exist to prevent.
    let loading = reloader.clone().map(|r| tokio::spawn(watch_plugins(r)));

    let resolved = resolve_all(&config, &up, &down).await?;
    let many_workspaces = super::startup::check_many_workspaces(&config, &up, None, &resolved)?;
    let (watched, streams) = triggers::reflectors(&config, resolved, &up.client, &down.client, many_workspaces);
    let workers_alive = Arc::new(AtomicUsize::new(0));
    let health = Arc::new(
        Health::new(registry, reloader.clone(), Arc::clone(&connectivity), {
            let (alive, want) = (Arc::clone(&workers_alive), config.workers);
            Box::new(move || {
                let n = alive.load(Ordering::Acquire);
                (n < want).then(|| format!("{n} of {want} sync workers running"))
            })
        })
        .with_ha_view(Arc::clone(&ha_view)),
    );
    let explainer = Arc::clone(&health);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = match listener {
        Some(listener) => {
            let mut rx = stop_rx.clone();
            let (bound, task) = http::serve(listener, Arc::clone(&health), async move {
                let _ = rx.wait_for(|s| *s).await;
            })?;
            info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            Some(task)
        }
        None => None,
    };

    let drift = watched
        .iter()
        .map(|w| ((w.down_resource.gvr.group.clone(), w.down_resource.kind.clone()), w.config.drift.clone()))
        .collect();
    let syncer = Syncer::new(
        KubeDownstream::new(down.client.clone()),
        Arc::clone(&rules),
        config.sync.clone(),
        StateCache::new(),
    )
    .with_drift_policies(drift);
    let mut upstream = Upstream::new(up.client.clone(), "downsync", opts.instance.clone());
    if many_workspaces {
        info!(upstream = %up.url, "the upstream serves many kcp workspaces: each is kept apart");
        upstream = upstream.with_workspaces(up.config.clone(), "downsync", opts.instance.clone());
    }
    let controller = Arc::new(Controller {
        namespaces: Namespaces::new(down.client.clone(), upstream.clone(), config.sync.ownership.clone()),
        upstream,
        queue: WorkQueue::with_shares(RateLimit::default(), shares(&config, watched.len())),
        metrics,
        health,
        connectivity,
        started: Instant::now(),
        initial_pending: Mutex::default(),
        initial_total: AtomicU64::new(0),
        initial_failed: AtomicU64::new(0),
        startup_orphans: Mutex::default(),
        last_failure: Mutex::default(),
        workers_alive,
        ha: Arc::clone(&gate),
        watched,
        syncer,
        config,
    });
    explainer.set_explainer(Arc::clone(&controller) as Arc<dyn http::Explainer>);
    let reflectors = triggers::spawn_reflectors(&controller, streams);

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = controller.wait_stores() => {}
        () = &mut shutdown => {
            info!("stopping before the caches filled");
            let _ = stop_tx.send(true);
            return Ok(Summary::default());
        }
    }
    if let (Some(r), Some(events)) = (&reloader, crate::kube::pod_events::PodEvents::from_env(down.client.clone())) {
        // The reload thread must not wait on the API: notices go through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::plugin::Notice>();
        r.set_notifier(Arc::new(move |n| {
            let _ = tx.send(n);
        }));
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                events.publish(n.warning, n.reason, &n.message).await;
            }
        });
    }
    let _watch = match loading {
        Some(task) => Some(task.await.map_err(|e| Error::Task(format!("loading plugins: {e}")))??),
        None => None,
    };
    controller.enqueue_initial().await;
    // The caches are warm: from here on this replica is a standby that can take over.
    let shard_watch = tokio::spawn(Arc::clone(&controller).watch_shards());
    let coordinator = controller.config.ha.enabled.then(|| {
        Coordinator::new(down.client.clone(), &controller.config.ha, controller.target(), gate, ha_metrics, ha_view)
            .spawn()
    });

    let supervisor = tokio::spawn(Arc::clone(&controller).supervise_workers());
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
    if let Some(c) = coordinator {
        // First: stop writing, let the syncs in flight finish, and hand the Leases over at
        // once, so that another replica takes over within a retry period.
        c.shutdown().await;
    }
    shard_watch.abort();
    controller.queue.shut_down();
    let _ = supervisor.await;
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

/// One class per kind, and one for the namespaces downsync creates.
fn shares(config: &RunConfig, kinds: usize) -> Shares<WorkKey> {
    let class_of = Arc::new(move |key: &WorkKey| match key {
        WorkKey::Object(k) => k.resource,
        WorkKey::Namespace { .. } => kinds,
    });
    Shares {
        class_of,
        per_class: config.workers_per_kind(),
        low: config.resync_workers(),
        low_yield: config.resync_yield(),
        low_pace: config.resync_pace(),
    }
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

    /// Queues the objects (and created namespaces) of shards this replica just acquired, from
    /// the warm caches: what the previous holder left in step is compared and not written.
    async fn watch_shards(self: Arc<Self>) {
        let mut changes = self.ha.subscribe();
        let mut last = changes.borrow_and_update().clone();
        while changes.changed().await.is_ok() {
            let now = changes.borrow_and_update().clone();
            // New shards, and shards lost and regained since the last look (a new epoch).
            let gained: HashSet<u32> = now.iter().filter(|(i, e)| last.get(i) != Some(e)).map(|(i, _)| *i).collect();
            last = now;
            if gained.is_empty() {
                continue;
            }
            let keys: Vec<WorkKey> =
                self.all_keys().into_iter().filter(|k| gained.contains(&self.shard_of_key(k))).collect();
            info!(shards = ?gained, objects = keys.len(), "shards acquired; syncing their objects");
            for k in keys {
                self.queue.add(k);
            }
            if !self.config.keeps_namespaces() {
                match self.namespaces.created().await {
                    Ok(created) => {
                        for (downstream, upstream) in created {
                            let key = WorkKey::Namespace { downstream, upstream };
                            if gained.contains(&self.shard_of_key(&key)) {
                                self.queue.add(key);
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "cannot list the namespaces downsync created"),
                }
            }
        }
    }

    pub(super) fn mapping(&self) -> &NamespaceMapping {
        &self.config.namespace_mapping
    }

    pub(super) fn selected(&self, w: &Watched, obj: &DynamicObject) -> bool {
        let ns = obj.metadata.namespace.as_deref().map(|ns| crate::sync::workspaces::split_namespace(ns).1);
        self.config.selects(&w.config, ns, &obj.name_any())
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

    /// Queues every key for the initial sync; owned copies without an upstream object wait out
    /// the grace period, and namespaces downsync created are checked for cleanup.
    async fn enqueue_initial(&self) {
        let keys = self.all_keys();
        let orphans: HashSet<ObjectKey> = keys
            .iter()
            .filter_map(|k| match k {
                WorkKey::Object(o) if self.watched.get(o.resource).is_some_and(|w| w.upstream(o).is_none()) => {
                    Some(o.clone())
                }
                _ => None,
            })
            .collect();
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
        // Namespaces whose upstream namespace went while downsync was not running.
        if !self.config.keeps_namespaces() {
            match self.namespaces.created().await {
                Ok(created) => {
                    for (downstream, upstream) in created {
                        self.queue.add_after(
                            WorkKey::Namespace { downstream, upstream },
                            self.config.orphan_grace().max(Duration::from_secs(1)),
                        );
                    }
                }
                Err(e) => debug!(error = %e, "cannot list the namespaces downsync created"),
            }
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
            self.metrics.set_resync_interval(self.queue.resync_interval());
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
                self.queue.add_low(k);
            }
        }
    }

    /// A plugin swap is pushed by the registry; the kinds whose rules changed are looked at
    /// again, so the new behaviour shows without waiting for the next change or resync.
    async fn watch_rules(self: Arc<Self>, rules: Arc<PluginRegistry>) {
        let mut changes = rules.subscribe();
        // A shadow version starting for a kind also counts: its objects are looked at again so
        // the shadow sees each of them, and the active rules still decide every write.
        let fingerprints = |set: &PluginSet| -> Vec<String> {
            self.watched
                .iter()
                .map(|w| {
                    let (g, k) = (&w.up_ar.group, &w.up_ar.kind);
                    format!("{}|{}", set.fingerprint_for(g, k), set.shadow_fingerprint_for(g, k))
                })
                .collect()
        };
        let mut last = fingerprints(&rules.snapshot());
        while changes.changed().await.is_ok() {
            let now = fingerprints(&rules.snapshot());
            let kinds: HashSet<usize> = (0..now.len()).filter(|&i| now.get(i) != last.get(i)).collect();
            last = now;
            if kinds.is_empty() {
                continue;
            }
            let keys = self.keys_of_kinds(&kinds);
            info!(objects = keys.len(), kinds = kinds.len(), "rules changed; syncing those kinds again");
            // In the low lane: upstream changes that come in meanwhile go first.
            for k in keys {
                self.queue.add_low(k);
            }
        }
    }

    /// Runs the configured number of workers, starting a new one whenever one ends before
    /// shutdown (a worker survives panics in a reconcile, but not, say, a panic in its own
    /// bookkeeping).
    async fn supervise_workers(self: Arc<Self>) {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.config.workers {
            workers.spawn(Arc::clone(&self).work());
        }
        while let Some(ended) = workers.join_next().await {
            if self.queue.is_shut_down() {
                continue;
            }
            if let Err(e) = ended {
                error!(error = %e, "a sync worker died; starting another");
                self.metrics.worker_panicked();
            }
            workers.spawn(Arc::clone(&self).work());
        }
    }

    async fn work(self: Arc<Self>) {
        self.workers_alive.fetch_add(1, Ordering::AcqRel);
        let _alive = AliveGuard(Arc::clone(&self.workers_alive));
        while let Some(key) = self.queue.next().await {
            self.metrics.busy(self.kind(&key), 1);
            let outcome = std::panic::AssertUnwindSafe(reconcile(&key, &self)).catch_unwind().await;
            let ok = match outcome {
                Ok(Ok(action)) => {
                    self.succeeded(&key, action);
                    true
                }
                Ok(Err(e)) => {
                    self.failed(&key, &e).await;
                    false
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    error!(kind = self.kind(&key), key = ?key, panic = %why, "a sync panicked; queued again");
                    self.metrics.worker_panicked();
                    self.queue.add_rate_limited(key.clone());
                    false
                }
            };
            self.metrics.busy(self.kind(&key), -1);
            self.queue.done(&key);
            self.initial_done_with(&key, ok);
            self.metrics.set_queue_depth(self.queue.len());
        }
    }

    fn succeeded(&self, key: &WorkKey, action: Action) {
        self.queue.forget(key);
        if lock(&self.last_failure).remove(key).is_some() {
            info!(kind = self.kind(key), key = ?key, "synced again after failures");
        }
        if let Action::After(d) = action {
            self.queue.add_after(key.clone(), d);
        }
    }

    async fn failed(&self, key: &WorkKey, e: &ReconcileError) {
        let step = error_policy(e);
        let reason = event_reason(e);
        let message = e.to_string();
        let first_line = message.lines().next().unwrap_or_default().to_string();
        let state = format!("{reason}: {first_line}");
        let changed = lock(&self.last_failure).insert(key.clone(), state.clone()).as_ref() != Some(&state);
        let kind = self.kind(key);
        self.metrics.failed(kind, reason);
        if changed {
            warn!(kind, key = ?key, reason, ?step, error = %first_line, "sync failed");
            if let Some(up) = self.upstream_object(key) {
                let w = match key {
                    WorkKey::Object(k) => self.watched.get(k.resource),
                    WorkKey::Namespace { .. } => None,
                };
                if let Some(w) = w
                    && let Err(err) = self.upstream.warn(&w.up_ar, &up, reason, message.clone()).await
                {
                    warn!(kind, key = ?key, reason, error = %err, "cannot publish an Event on the upstream object");
                }
            }
        } else {
            debug!(kind, key = ?key, reason, ?step, error = %first_line, "sync failed again");
        }
        match step {
            Step::Retry => {
                self.metrics.retried(kind);
                let delay = self.queue.add_rate_limited(key.clone());
                debug!(kind, key = ?key, delay_ms = delay.as_millis() as u64, "retrying");
            }
            Step::RetryAfter(d) => {
                self.metrics.retried(kind);
                self.queue.forget(key);
                self.queue.add_after(key.clone(), d);
            }
            Step::Park => self.queue.forget(key),
        }
    }

    fn upstream_object(&self, key: &WorkKey) -> Option<Arc<DynamicObject>> {
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
}

/// Counts a worker out when it ends, however it ends.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
