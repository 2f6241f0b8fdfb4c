//! `downsync run`: connects, wires start-up, the watches and the workers together, and runs
//! until stopped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::registry::Registry;
use tracing::info;

use super::config::RunConfig;
use super::connectivity::Connectivity;
use super::context::{Controller, KindSlot};
use super::ha::{Coordinator, HaConfig, HaMetrics, HaView, ShardGate, SharedVerdicts, SharedView};
use super::http::{self, Health};
use super::keys::WorkKey;
use super::metrics::SyncMetrics;
use super::namespaces::Namespaces;
use super::startup::{Resolution, connect, plugin_reloader, resolve_kind, watch_plugins};
use super::state_file::StateFile;
use crate::kube::KubeDownstream;
use crate::kube::upstream::Upstream;
use crate::plugin::{Metrics, PluginRegistry, PluginSet};
use crate::sync::{RateLimit, Shares, StateCache, Syncer, WorkQueue};

pub use super::startup::{Error, Result};

/// Options of one run that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit after the initial sync.
    pub once: bool,
    /// This process's name in Events (the pod name).
    pub instance: Option<String>,
    /// Serve every endpoint plainly, without authentication, on 127.0.0.1 only
    /// (`--insecure-endpoints`, for development and tests).
    pub insecure_endpoints: bool,
}

/// What a run did, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Objects whose initial sync succeeded.
    pub synced: u64,
    /// Objects whose initial sync failed.
    pub failed: u64,
}

/// Connects, loads the plugins, starts the reflectors and the workers, and runs until
/// `shutdown` completes (or, with `once`, until the initial sync is done).
pub async fn run(
    config: RunConfig,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary> {
    config.validate()?;
    refuse_once_with_ha(&config, &opts)?;
    // Bind first: a taken address is a mistake to report before anything else happens.
    let listener = match config.metrics_addr {
        Some(addr) => Some(http::bind(addr, opts.insecure_endpoints).await?),
        None => None,
    };
    let tls = match &listener {
        Some(http::Listeners::Secure { .. }) => Some(serving_certificate(&config).await?),
        _ => None,
    };
    let (up, down) = connect(&config).await?;
    let (parts, registry) = Parts::new(&config, &up.url, &down.url);
    let reloader = plugin_reloader(&config, &parts.rules).await?;
    if let (Some(r), Some(ha)) = (&reloader, config.ha()) {
        share_verdicts(r, &parts.verdicts, &ha.resolved_identity());
    }
    // Compiling can take long (tens of seconds for an interpreted guest without a cached
    // artifact): it runs while the caches fill, and the first sync waits for it, since syncing
    // without the rules would write what they exist to prevent.
    let loading = start_loading(&config, reloader.as_ref(), &down.client)?;
    let resolutions = resolve_kinds(&config, &up, &down).await?;
    let served: Vec<_> = resolutions
        .iter()
        .filter_map(|r| if let Resolution::Served(r) = r { Some((**r).clone()) } else { None })
        .collect();
    let many_workspaces = super::startup::check_many_workspaces(&config, &up, None, &served)?;
    let workers_alive = Arc::new(AtomicUsize::new(0));
    let health = health(&config, registry, reloader.clone(), &parts, &workers_alive);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let security =
        tls.map(|tls| http::Security { authorizer: Arc::new(http::Authorizer::new(down.client.clone())), tls });
    let server = serve(listener, &health, security, stop_rx)?;
    let mut upstream = Upstream::new(up.client.clone(), "downsync", opts.instance.clone());
    if many_workspaces {
        info!(upstream = %up.url, "the upstream serves many kcp workspaces: each is kept apart");
        upstream = upstream.with_workspaces(up.config.clone(), "downsync", opts.instance.clone());
    }
    let (state_file, state) = last_state(&config, &down.url).await;
    let controller =
        controller(config, upstream, (&down.client, state), &parts, many_workspaces, &health, workers_alive);
    health.set_explainer(Arc::clone(&controller) as Arc<dyn http::Explainer>);
    controller.start_watches(resolutions);

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = controller.wait_stores() => {}
        () = &mut shutdown => {
            info!("stopping before the caches filled");
            controller.stop_watches();
            let _ = stop_tx.send(true);
            return Ok(Summary::default());
        }
    }
    let _watch = match loading {
        Some(task) => Some(task.await.map_err(|e| Error::Task(format!("loading plugins: {e}")))??),
        None => None,
    };
    controller.enqueue_initial().await;
    let running = Running::start(&controller, parts, &down.client, &state_file);
    if opts.once {
        tokio::select! {
            () = controller.wait_initial() => info!("initial sync done; exiting (--once)"),
            () = &mut shutdown => info!("shutdown requested"),
        }
    } else {
        shutdown.await;
        info!("shutdown requested; finishing the syncs in flight");
    }
    running.stop(&controller).await;
    let state = controller.syncer.state().clone();
    let _ = tokio::task::spawn_blocking(move || state_file.save(&state)).await;
    let _ = stop_tx.send(true);
    for task in server {
        let _ = task.await;
    }
    Ok(controller.summary())
}

/// The state the last run saved, read off the workers' threads.
async fn last_state(config: &RunConfig, downstream_url: &str) -> (StateFile, StateCache) {
    let file = StateFile::new(config, downstream_url);
    let reader = file.clone();
    let state = tokio::task::spawn_blocking(move || reader.load()).await.unwrap_or_default();
    (file, state)
}

/// `--once` syncs everything in one process and exits: it is no replica among several.
fn refuse_once_with_ha(config: &RunConfig, opts: &RunOptions) -> Result<()> {
    if opts.once && config.ha.is_some() {
        return Err(super::config::Error::Invalid {
            setting: "ha".into(),
            message: "--once syncs everything in one process and exits; it cannot run as one of several replicas"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// Resolves every configured kind on both sides. A kind not served yet waits (its CRD may
/// come); one missing from a built-in group is a typo, and an error.
async fn resolve_kinds(
    config: &RunConfig,
    up: &crate::kube::clients::Connected,
    down: &crate::kube::clients::Connected,
) -> Result<Vec<Resolution>> {
    let mut resolutions = Vec::new();
    for (index, r) in config.resources.iter().enumerate() {
        let resolution = resolve_kind(config, index, &up.client, &down.client).await?;
        if let Resolution::NotServed(side) = resolution
            && !super::startup::may_come_later(r)
        {
            return Err(super::startup::not_served(index, r, side));
        }
        resolutions.push(resolution);
    }
    Ok(resolutions)
}

/// What the probes and the operations endpoints report on; live while every worker runs.
fn health(
    config: &RunConfig,
    registry: Registry,
    reloader: Option<Arc<crate::plugin::Reloader>>,
    parts: &Parts,
    workers_alive: &Arc<AtomicUsize>,
) -> Arc<Health> {
    let (alive, want) = (Arc::clone(workers_alive), config.workers);
    let live = Box::new(move || {
        let n = alive.load(Ordering::Acquire);
        (n < want).then(|| format!("{n} of {want} sync workers running"))
    });
    Arc::new(
        Health::new(registry, reloader, Arc::clone(&parts.connectivity), live).with_ha_view(Arc::clone(&parts.ha_view)),
    )
}

/// The shared context of the workers, over the watched kinds' caches.
fn controller(
    config: RunConfig,
    upstream: Upstream,
    (down, state): (&kube::Client, StateCache),
    parts: &Parts,
    many_workspaces: bool,
    health: &Arc<Health>,
    workers_alive: Arc<AtomicUsize>,
) -> Arc<Controller> {
    let drift = config.resources.iter().map(|r| ((r.group().to_string(), r.kind.clone()), r.drift.clone())).collect();
    let syncer = Syncer::new(KubeDownstream::new(down.clone()), Arc::clone(&parts.rules), config.sync.clone(), state)
        .with_drift_policies(drift);
    Arc::new(Controller {
        namespaces: Namespaces::new(down.clone(), upstream.clone(), config.sync.ownership.clone()),
        upstream,
        queue: WorkQueue::with_shares(RateLimit::default(), shares(&config, config.resources.len())),
        metrics: parts.metrics.clone(),
        health: Arc::clone(health),
        connectivity: Arc::clone(&parts.connectivity),
        started: Instant::now(),
        initial_pending: Mutex::default(),
        initial_total: AtomicU64::new(0),
        initial_failed: AtomicU64::new(0),
        startup_orphans: Mutex::default(),
        last_failure: Mutex::default(),
        workers_alive,
        ha: Arc::clone(&parts.gate),
        kinds: config.resources.iter().cloned().map(KindSlot::new).collect(),
        waiting: super::context::Waiting::default(),
        many_workspaces,
        list_modes: crate::kube::lists::ListModes::new(config.feature(super::features::WATCH_LIST_CLIENT)),
        syncer,
        config,
    })
}

/// The tasks of a run once its caches are warm: the workers, the background loops, the
/// reflectors, and in HA the Lease coordinator; stopped in that order's reverse.
struct Running {
    coordinator: Option<super::ha::CoordinatorHandle>,
    shard_watch: tokio::task::JoinHandle<()>,
    supervisor: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(controller: &Arc<Controller>, parts: Parts, down: &kube::Client, state_file: &StateFile) -> Self {
        // The caches are warm: from here on this replica is a standby that can take over.
        let shard_watch = tokio::spawn(Arc::clone(controller).watch_shards());
        let coordinator = controller.config.ha().map(|ha| {
            let (gate, ha_metrics, ha_view) = (parts.gate, parts.ha_metrics, parts.ha_view);
            Coordinator::new(down.clone(), ha, controller.target(), gate, ha_metrics, ha_view)
                .with_verdicts(parts.verdicts)
                .spawn()
        });
        let supervisor = tokio::spawn(Arc::clone(controller).supervise_workers());
        let background = vec![
            tokio::spawn(Arc::clone(controller).report_progress()),
            tokio::spawn(Arc::clone(controller).resync_loop()),
            tokio::spawn(Arc::clone(controller).watch_rules(Arc::clone(&parts.rules))),
            tokio::spawn(Arc::clone(controller).take_up_later_kinds()),
            tokio::spawn(super::state_file::keep(Arc::clone(controller), state_file.clone())),
        ];
        Self { coordinator, shard_watch, supervisor, background }
    }

    async fn stop(self, controller: &Controller) {
        if let Some(c) = self.coordinator {
            // First: stop writing, let the syncs in flight finish, and hand the Leases over at
            // once, so that another replica takes over within a retry period.
            c.shutdown().await;
        }
        self.shard_watch.abort();
        controller.queue.shut_down();
        let _ = self.supervisor.await;
        for t in self.background {
            t.abort();
        }
        controller.stop_watches();
    }
}

/// What a run builds before it connects its watches: the metrics (with the registry that
/// serves them), the rules, and the HA state.
struct Parts {
    metrics: SyncMetrics,
    connectivity: Arc<Connectivity>,
    rules: Arc<PluginRegistry>,
    ha_metrics: HaMetrics,
    ha_view: SharedView,
    gate: Arc<ShardGate>,
    verdicts: Arc<SharedVerdicts>,
}

impl Parts {
    fn new(config: &RunConfig, up_url: &str, down_url: &str) -> (Self, Registry) {
        let mut registry = Registry::default();
        let metrics = SyncMetrics::default();
        metrics.register(&mut registry);
        let plugin_metrics = Metrics::default().with_journal(config.explain_objects());
        plugin_metrics.register(&mut registry);
        let connectivity = Arc::new(Connectivity::new(up_url, down_url));
        connectivity.register(&mut registry);
        super::features::register(&config.feature_gates, &mut registry);
        let ha_metrics = HaMetrics::default();
        let ha = config.ha();
        if ha.is_some() {
            ha_metrics.register(&mut registry);
        }
        let identity = config.replica_name();
        let ha_view: SharedView = Arc::new(Mutex::new(HaView {
            enabled: ha.is_some(),
            identity: identity.clone(),
            namespace: ha.map(HaConfig::resolved_namespace).unwrap_or_default(),
            shards: ha.map_or(1, |h| h.shards),
            live_replicas: vec![identity],
            fair_share: 1,
            leases: Vec::new(),
        }));
        let gate = Arc::new(ha.map_or_else(ShardGate::single, |h| ShardGate::sharded(h.shards)));
        let slots = config.engine_config().pool_instances as usize;
        let rules = Arc::new(PluginRegistry::new(PluginSet::default(), plugin_metrics).with_call_slots(slots));
        let verdicts = Arc::new(SharedVerdicts::new(Arc::clone(&gate)));
        (Self { metrics, connectivity, rules, ha_metrics, ha_view, gate, verdicts }, registry)
    }
}

/// Serves the operations endpoints until `stop` turns true, when an address is configured.
fn serve(
    listeners: Option<http::Listeners>,
    health: &Arc<Health>,
    security: Option<http::Security>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(listeners) = listeners else { return Ok(Vec::new()) };
    let served = http::serve(listeners, Arc::clone(health), security, stop)?;
    match served.probes {
        Some(probes) => info!(
            addr = %served.ops,
            probes = %probes,
            "serving /metrics, /plugins, /explain and /shards over HTTPS to callers the downstream cluster grants \
             them; /healthz and /readyz plainly on the probes' port"
        ),
        None => tracing::warn!(
            addr = %served.ops,
            "serving every endpoint plainly and without authentication on loopback (--insecure-endpoints)"
        ),
    }
    Ok(served.tasks)
}

/// The HTTPS certificate: the one mounted at /etc/downsync/tls (`metrics_cert_dir`), or a
/// self-signed one when nothing is there (off the async workers: it reads files or makes a key).
/// A folder holding only one of `tls.crt` and `tls.key` is an error, not a silent self-signed
/// certificate.
async fn serving_certificate(config: &RunConfig) -> Result<Arc<rustls::ServerConfig>> {
    let dir = config.metrics_cert_dir.clone().filter(|d| ["tls.crt", "tls.key"].iter().any(|f| d.join(f).exists()));
    match &dir {
        Some(d) => tracing::info!(dir = %d.display(), "serving HTTPS with the mounted certificate"),
        None => tracing::info!("serving HTTPS with a self-signed certificate (none mounted at /etc/downsync/tls)"),
    }
    let made = tokio::task::spawn_blocking(move || super::http_tls::server_config(dir.as_deref()))
        .await
        .map_err(|e| Error::Task(format!("loading the serving certificate: {e}")))?;
    Ok(made?)
}

/// In HA, plugin rollouts are decided once for every replica: by the holder of shard 0, from
/// the calls of all, through the Leases.
fn share_verdicts(reloader: &Arc<crate::plugin::Reloader>, verdicts: &Arc<SharedVerdicts>, identity: &str) {
    reloader.share_verdicts(Arc::clone(verdicts) as Arc<dyn crate::plugin::VerdictBoard>, identity);
    let (counts, wake) = (Arc::downgrade(reloader), Arc::downgrade(reloader));
    verdicts.connect(
        Box::new(move || counts.upgrade().map(|r| r.trial_counts()).unwrap_or_default()),
        Box::new(move || {
            if let Some(r) = wake.upgrade() {
                r.wake();
            }
        }),
    );
}

/// Plugin rollbacks and promotions become Events on this pod (`POD_NAME`), when it has one.
/// Starts loading the plugins (pulling the registry sources first) on a task of its own, with
/// their notices published as Events on the pod from now on.
fn start_loading(
    config: &RunConfig,
    reloader: Option<&Arc<crate::plugin::Reloader>>,
    down: &kube::Client,
) -> Result<Option<tokio::task::JoinHandle<Result<super::startup::PluginWatch>>>> {
    let Some(r) = reloader else { return Ok(None) };
    publish_plugin_notices(r, down);
    Ok(Some(tokio::spawn(watch_plugins(Arc::clone(r), config.registry_sources()?))))
}

fn publish_plugin_notices(reloader: &crate::plugin::Reloader, down: &kube::Client) {
    let Some(events) = crate::kube::pod_events::PodEvents::from_env(down.clone()) else { return };
    // The reload thread must not wait on the API: notices go through a channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::plugin::Notice>();
    reloader.set_notifier(Arc::new(move |n| {
        let _ = tx.send(n);
    }));
    tokio::spawn(async move {
        while let Some(n) = rx.recv().await {
            events.publish(n.warning, n.reason, &n.message).await;
        }
    });
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
        low_interval: super::config::RESYNC_INTERVAL,
    }
}
