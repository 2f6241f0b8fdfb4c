//! `downsync run`: connects, wires start-up, the watches and the workers together, and runs
//! until stopped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::registry::Registry;
use tracing::info;

use super::config::RunConfig;
use super::connectivity::Connectivity;
use super::context::{Controller, lock};
use super::ha::{Coordinator, HaMetrics, HaView, ShardGate, SharedView};
use super::http::{self, Health};
use super::keys::WorkKey;
use super::metrics::SyncMetrics;
use super::namespaces::Namespaces;
use super::startup::{connect, plugin_reloader, resolve_all, watch_plugins};
use super::watches;
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
    let plugin_metrics = Metrics::default().with_journal(config.explain_objects());
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
    let slots = config.engine_config().pool_instances as usize;
    let rules = Arc::new(PluginRegistry::new(PluginSet::default(), plugin_metrics).with_call_slots(slots));
    let reloader = plugin_reloader(&config, &rules).await?;
    // Compiling can take long (tens of seconds for an interpreted guest without a cached
    // artifact): it runs while the caches fill, and the first sync waits for it, since syncing
    // without the rules would write what they exist to prevent.
    let loading = reloader.clone().map(|r| tokio::spawn(watch_plugins(r)));

    let resolved = resolve_all(&config, &up, &down).await?;
    let (watched, streams) = watches::reflectors(&config, resolved, &up.client, &down.client);
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
    let controller = Arc::new(Controller {
        upstream: Upstream::new(up.client.clone(), "downsync", opts.instance.clone()),
        namespaces: Namespaces::new(down.client.clone(), up.client.clone(), config.sync.ownership.clone()),
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
    let reflectors = watches::spawn_reflectors(&controller, streams);

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
        low_interval: super::config::RESYNC_INTERVAL,
    }
}
