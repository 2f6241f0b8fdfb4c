//! High availability and sharding: replicas coordinate through `coordination.k8s.io/v1` Leases
//! in the downstream cluster, the way client-go's leader election does; a replica writes the
//! objects of a shard only while it holds that shard's Lease.
//!
//! Every replica runs its reflectors (a warm standby). Upstream objects fall into `shards`
//! shards by a stable hash of their upstream namespace; shard `i` is the Lease
//! `downsync-<target>-shard-<i>` (one shard: `downsync-<target>`). Each replica also keeps a
//! member Lease `downsync-<target>-member-<identity>` so that replicas holding no shard are
//! counted too: a replica holds at most `ceil(shards / live replicas)` shards, releases extras
//! when one joins, and takes expired or free shards while it holds fewer.
//!
//! Why the Lease loop is written here rather than taken from a crate: `kube-coordinate` 2.0
//! depends on kube 2, not kube 5; `kube-lease-manager` 0.13 (kube 5) has no renew deadline (a
//! holder whose renewals fail keeps reporting that it leads until a read shows another holder),
//! its standbys sleep until the recorded expiry, so a Lease released on SIGTERM is only taken
//! after the full lease duration instead of about one retry period, and it always acquires a
//! free Lease, which leaves no room for holding at most a fair share of shards. The algorithm
//! below is client-go's: optimistic concurrency on the Lease's resourceVersion; expiry judged
//! by the observer's own clock from when it saw the record change (clock skew between nodes
//! does not matter); the holder stops writing at its renew deadline, before the lease duration
//! lets anyone else in; release clears `holderIdentity`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, RwLockReadGuard, watch};
use tracing::{debug, info, warn};

/// Label on every Lease downsync makes: the sync target it coordinates.
pub const HA_TARGET_LABEL: &str = "downsync.dev/ha-target";
/// Label on every Lease downsync makes: `shard` or `member`.
pub const HA_ROLE_LABEL: &str = "downsync.dev/ha-role";

/// Why the HA settings or the Lease loop fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("setting ha.{setting}: {message}")]
    Invalid {
        /// The setting under `ha:`.
        setting: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A Lease request failed.
    #[error("lease {name}: {source}")]
    Lease {
        /// The Lease.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A Lease request did not answer in time.
    #[error("lease {name}: no answer within {seconds}s")]
    Timeout {
        /// The Lease.
        name: String,
        /// The time allowed.
        seconds: u64,
    },
}

/// Result of the Lease loop.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `ha:` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HaConfig {
    /// Coordinate replicas through Leases; only the holder of a shard's Lease writes.
    pub enabled: bool,
    /// Upstream namespaces split into this many shards, each its own Lease.
    pub shards: u32,
    /// This replica's name in the Leases (and its user agent). Unset: `POD_NAME`, else the
    /// host name.
    pub identity: Option<String>,
    /// The downstream namespace of the Leases. Unset: `POD_NAMESPACE`, else `default`.
    pub namespace: Option<String>,
    /// How long a Lease is valid after its last renewal (client-go: 15).
    pub lease_duration_seconds: u64,
    /// A holder that could not renew for this long stops writing (client-go: 10).
    pub renew_deadline_seconds: u64,
    /// How often Leases are renewed, and free ones looked for (client-go: 2).
    pub retry_period_seconds: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            shards: 1,
            identity: None,
            namespace: None,
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
            retry_period_seconds: 2,
        }
    }
}

/// The most shards: each is a Lease renewed every retry period.
pub const MAX_SHARDS: u32 = 256;

impl HaConfig {
    /// Checks the settings: 1 <= shards <= [`MAX_SHARDS`], lease > renew deadline > retry >= 1.
    pub fn validate(&self) -> Result<()> {
        let invalid = |setting, message: String| Err(Error::Invalid { setting, message });
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return invalid("shards", format!("{} is out of range: give 1 to {MAX_SHARDS}", self.shards));
        }
        if self.retry_period_seconds == 0 {
            return invalid("retryPeriodSeconds", "must be at least 1".into());
        }
        if self.renew_deadline_seconds <= self.retry_period_seconds {
            return invalid(
                "renewDeadlineSeconds",
                format!(
                    "{} must be more than retryPeriodSeconds ({}): a holder needs more than one try to renew",
                    self.renew_deadline_seconds, self.retry_period_seconds
                ),
            );
        }
        if self.lease_duration_seconds <= self.renew_deadline_seconds {
            return invalid(
                "leaseDurationSeconds",
                format!(
                    "{} must be more than renewDeadlineSeconds ({}): a holder must stop writing before \
                     another replica may take its Lease",
                    self.lease_duration_seconds, self.renew_deadline_seconds
                ),
            );
        }
        if i32::try_from(self.lease_duration_seconds).is_err() {
            return invalid("leaseDurationSeconds", "is too large".into());
        }
        if let Some(id) = &self.identity
            && (id.is_empty() || id.len() > 200)
        {
            return invalid("identity", "must be 1 to 200 characters".into());
        }
        Ok(())
    }

    /// This replica's identity: `ha.identity`, else `POD_NAME`, else the host name.
    pub fn resolved_identity(&self) -> String {
        if let Some(id) = &self.identity {
            return id.clone();
        }
        if let Ok(pod) = std::env::var("POD_NAME")
            && !pod.is_empty()
        {
            return pod;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("downsync-{}", std::process::id()))
    }

    /// The namespace of the Leases: `ha.namespace`, else `POD_NAMESPACE`, else `default`.
    pub fn resolved_namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "default".into())
    }

    fn shard_count(&self) -> u32 {
        if self.enabled { self.shards.max(1) } else { 1 }
    }
}

/// The shard of an upstream namespace (cluster-scoped objects: the empty name): FNV-1a 64 of
/// the name, modulo `shards`. Stable across processes and versions, unlike std's hasher.
pub fn shard_of(namespace: Option<&str>, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.unwrap_or_default().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `shards`, a u32.
    u32::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// The Lease of shard `i`: `downsync-<target>` when there is one shard, else
/// `downsync-<target>-shard-<i>`.
pub fn shard_lease_name(target: &str, shards: u32, i: u32) -> String {
    if shards <= 1 { format!("downsync-{target}") } else { format!("downsync-{target}-shard-{i}") }
}

/// The member Lease of a replica, which says it is alive even when it holds no shard.
pub fn member_lease_name(target: &str, identity: &str) -> String {
    let safe: String =
        identity.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("downsync-{target}-member-{}", safe.trim_matches('-'))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values replaced in single assignments: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Slot {
    /// Writes are allowed until this instant: the last successful renewal's start plus the
    /// renew deadline. None: not held. Checked by the workers themselves, so writing stops at
    /// the deadline even when the Lease loop is stuck in a request.
    valid_until: Mutex<Option<Instant>>,
    /// Reconciles of this shard hold it for reading; a release takes it for writing, so it
    /// waits for the syncs in flight before the Lease is let go.
    in_flight: RwLock<()>,
    /// Counts the times this shard became writable; a key skipped while it was not must be
    /// looked at again, even if the shard was lost and regained between two looks.
    epoch: std::sync::atomic::AtomicU64,
}

/// Which shards this replica may write now. Without HA it holds the one shard forever.
pub struct ShardGate {
    shards: u32,
    always: bool,
    slots: Vec<Slot>,
    held: watch::Sender<BTreeMap<u32, u64>>,
}

impl std::fmt::Debug for ShardGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGate").field("shards", &self.shards).field("held", &*self.held.borrow()).finish()
    }
}

/// Proof that a shard is held, kept for the length of one reconcile.
pub type Entered<'a> = Option<RwLockReadGuard<'a, ()>>;

impl ShardGate {
    /// The gate of a single process: one shard, always held.
    pub fn single() -> Self {
        let (held, _) = watch::channel(BTreeMap::from([(0, 0)]));
        Self { shards: 1, always: true, slots: Vec::new(), held }
    }

    /// The gate of an HA replica: `shards` shards, none held yet.
    pub fn sharded(shards: u32) -> Self {
        let slots = (0..shards.max(1))
            .map(|_| Slot { valid_until: Mutex::new(None), in_flight: RwLock::new(()), epoch: Default::default() })
            .collect();
        let (held, _) = watch::channel(BTreeMap::new());
        Self { shards: shards.max(1), always: false, slots, held }
    }

    /// The number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an upstream namespace.
    pub fn shard_of(&self, namespace: Option<&str>) -> u32 {
        shard_of(namespace, self.shards)
    }

    /// Whether this replica may write shard `i` now.
    pub fn holds(&self, i: u32) -> bool {
        if self.always {
            return true;
        }
        self.slots.get(i as usize).is_some_and(|s| lock(&s.valid_until).is_some_and(|t| Instant::now() < t))
    }

    /// Enters shard `i` for one reconcile: `None` when it is not held (the key is skipped; the
    /// holder syncs it). A held guard delays a release of the shard until the reconcile ends.
    pub async fn enter(&self, i: u32) -> Option<Entered<'_>> {
        if self.always {
            return Some(None);
        }
        if !self.holds(i) {
            return None;
        }
        let guard = self.slots.get(i as usize)?.in_flight.read().await;
        // A release may have come while we waited for the lock.
        self.holds(i).then_some(Some(guard))
    }

    /// The shards held now.
    pub fn held(&self) -> BTreeSet<u32> {
        (0..self.shards).filter(|&i| self.holds(i)).collect()
    }

    /// The held shards with the number of times each became writable, for queueing a shard's
    /// objects whenever it is (re)gained.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<u32, u64>> {
        self.held.subscribe()
    }

    fn set_valid_until(&self, i: u32, until: Option<Instant>) {
        let was = self.holds(i);
        if let Some(s) = self.slots.get(i as usize) {
            *lock(&s.valid_until) = until;
            if until.is_some() && !was {
                s.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    fn publish(&self) {
        let now: BTreeMap<u32, u64> = self
            .held()
            .into_iter()
            .map(|i| {
                let epoch =
                    self.slots.get(i as usize).map_or(0, |s| s.epoch.load(std::sync::atomic::Ordering::Acquire));
                (i, epoch)
            })
            .collect();
        self.held.send_if_modified(|h| {
            let changed = *h != now;
            *h = now;
            changed
        });
    }

    /// Waits for the reconciles of shard `i` in flight, up to `limit`.
    async fn drain(&self, i: u32, limit: Duration) {
        if let Some(s) = self.slots.get(i as usize)
            && tokio::time::timeout(limit, s.in_flight.write()).await.is_err()
        {
            warn!(shard = i, "syncs of a released shard still running after the wait; releasing anyway");
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// The HA metrics: shards in all, shards held, leadership, transitions.
#[derive(Debug, Clone, Default)]
pub struct HaMetrics {
    shards: Gauge,
    held: Gauge,
    leader: Gauge,
    live: Gauge,
    transitions: Family<EventLabels, Counter>,
}

impl HaMetrics {
    /// Registers the metrics (prefixed `downsync_ha_`) into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("downsync_ha");
        r.register("shards", "Shards the upstream namespaces are split into (ha.shards)", self.shards.clone());
        r.register("shards_held", "Shards whose Lease this replica holds", self.held.clone());
        r.register("leader", "1 while this replica holds at least one shard's Lease", self.leader.clone());
        r.register("live_replicas", "Replicas seen alive through their Leases, this one included", self.live.clone());
        r.register(
            "transitions",
            "Shard Lease transitions of this replica: acquired, released (given up), lost (renew deadline or taken)",
            self.transitions.clone(),
        );
    }

    fn transition(&self, event: &str) {
        self.transitions.get_or_create(&EventLabels { event: event.into() }).inc();
    }

    fn set(&self, held: usize, live: usize) {
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        self.leader.set(i64::from(held > 0));
        self.live.set(i64::try_from(live).unwrap_or(i64::MAX));
    }
}

/// One shard as the last poll saw it, for `/shards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardView {
    /// The shard.
    pub shard: u32,
    /// Its Lease.
    pub lease: String,
    /// Who holds it (empty: nobody).
    pub holder: String,
    /// Whether the holder's Lease has run out, as this replica judges it.
    pub expired: bool,
    /// Whether this replica holds it and may write.
    pub mine: bool,
}

/// What `/shards` shows: this replica, the live replicas, and every shard's holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HaView {
    /// Whether HA is on; without it this process holds everything.
    pub enabled: bool,
    /// This replica.
    pub identity: String,
    /// The namespace of the Leases.
    pub namespace: String,
    /// The number of shards.
    pub shards: u32,
    /// Replicas seen alive, this one included.
    pub live_replicas: Vec<String>,
    /// The most shards a replica holds now: ceil(shards / live replicas).
    pub fair_share: u32,
    /// Every shard.
    pub leases: Vec<ShardView>,
}

/// The latest [`HaView`], shared with the HTTP server.
pub type SharedView = Arc<Mutex<HaView>>;

/// Reads the latest view.
pub fn view_json(view: &SharedView) -> String {
    serde_json::to_string_pretty(&*lock(view)).unwrap_or_else(|_| "{}".into())
}

/// A Lease record as an observer saw it, and when it saw it change.
#[derive(Debug, Clone)]
struct Observed {
    holder: String,
    renew: Option<MicroTime>,
    duration: Duration,
    at: Instant,
}

impl Observed {
    fn expired(&self, now: Instant) -> bool {
        self.holder.is_empty() || now >= self.at + self.duration
    }
}

/// The Lease loop of one replica.
pub struct Coordinator {
    api: Api<Lease>,
    identity: String,
    target: String,
    namespace: String,
    shards: u32,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry: Duration,
    gate: Arc<ShardGate>,
    metrics: HaMetrics,
    view: SharedView,
    observed: HashMap<String, Observed>,
    /// When this replica started its last successful renewal (or acquisition), per held shard.
    renewed: HashMap<u32, Instant>,
    started: Instant,
}

/// The running Lease loop: stop it to release every Lease.
pub struct CoordinatorHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CoordinatorHandle {
    /// Stops writing at once, waits for the syncs in flight, releases the held Leases and
    /// deletes the member Lease, so that another replica takes over within a retry period.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the lease loop ended badly");
        }
    }
}

impl Coordinator {
    /// A Lease loop for `target` on the downstream `client`, feeding `gate`.
    pub fn new(
        client: Client,
        config: &HaConfig,
        target: &str,
        gate: Arc<ShardGate>,
        metrics: HaMetrics,
        view: SharedView,
    ) -> Self {
        let namespace = config.resolved_namespace();
        metrics.shards.set(i64::from(config.shard_count()));
        Self {
            api: Api::namespaced(client, &namespace),
            identity: config.resolved_identity(),
            target: target.to_string(),
            namespace,
            shards: config.shard_count(),
            lease_duration: Duration::from_secs(config.lease_duration_seconds),
            renew_deadline: Duration::from_secs(config.renew_deadline_seconds),
            retry: Duration::from_secs(config.retry_period_seconds),
            gate,
            metrics,
            view,
            observed: HashMap::new(),
            renewed: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Starts the loop.
    pub fn spawn(self) -> CoordinatorHandle {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(rx));
        CoordinatorHandle { stop, task }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        info!(
            identity = %self.identity, namespace = %self.namespace, shards = self.shards,
            lease_seconds = self.lease_duration.as_secs(), "high availability: coordinating through Leases"
        );
        loop {
            self.tick().await;
            // client-go's jitter: up to 20% of the retry period, so replicas do not poll in step.
            let jitter = self.retry.mul_f64(rand::random::<f64>() * 0.2);
            tokio::select! {
                () = tokio::time::sleep(self.next_wait(self.retry + jitter)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.release_all().await;
    }

    /// The retry period, or less when another replica's Lease runs out sooner: looking again
    /// right then, rather than up to a retry period later, bounds a failover by the lease
    /// duration plus the delay of observing the last renewal (at most one retry period).
    /// Leases that are renewed never run out this early, so this costs no extra rounds.
    fn next_wait(&self, retry: Duration) -> Duration {
        let now = Instant::now();
        self.observed
            .values()
            .filter(|o| o.holder != self.identity && !o.expired(now))
            .map(|o| (o.at + o.duration).saturating_duration_since(now) + Duration::from_millis(10))
            .fold(retry, Duration::min)
    }

    fn lease_name(&self, i: u32) -> String {
        shard_lease_name(&self.target, self.shards, i)
    }

    async fn call<T>(
        &self,
        name: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<T> {
        // A request may not outlive the renew deadline: the loop must come round in time.
        match tokio::time::timeout(self.renew_deadline, fut).await {
            Ok(r) => r.map_err(|e| Error::Lease { name: name.into(), source: Box::new(e) }),
            Err(_) => Err(Error::Timeout { name: name.into(), seconds: self.renew_deadline.as_secs() }),
        }
    }

    fn observe(&mut self, lease: &Lease, now: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.lease_duration, Duration::from_secs);
        let name = lease.name_any();
        let same = self.observed.get(&name).is_some_and(|o| o.holder == holder && o.renew == spec.renew_time);
        if !same {
            self.observed.insert(name, Observed { holder, renew: spec.renew_time, duration, at: now });
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.lease_duration.as_secs()).ok(),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn new_lease(&self, name: &str, role: &str, spec: LeaseSpec) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (HA_TARGET_LABEL.into(), self.target.clone()),
                    (HA_ROLE_LABEL.into(), role.into()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }

    fn lose(&mut self, i: u32, why: &str) {
        if self.renewed.remove(&i).is_some() {
            self.gate.set_valid_until(i, None);
            self.metrics.transition("lost");
            warn!(shard = i, lease = %self.lease_name(i), reason = why, "lost a shard; stopped writing it");
        }
    }

    /// One round: read the Leases, drop what expired, renew, release extras, acquire up to the
    /// fair share, renew the member Lease.
    async fn tick(&mut self) {
        let selector = format!("{HA_TARGET_LABEL}={}", self.target);
        let listed = self.call("(list)", self.api.list(&ListParams::default().labels(&selector))).await;
        let now = Instant::now();
        // Held shards whose renew deadline passed are lost, whatever else happens.
        let lapsed: Vec<u32> =
            self.renewed.iter().filter(|(_, t)| now >= **t + self.renew_deadline).map(|(i, _)| *i).collect();
        for i in lapsed {
            self.lose(i, "renew deadline passed");
        }
        let leases = match listed {
            Ok(l) => l.items,
            Err(e) => {
                warn!(error = %e, "cannot read the Leases; retrying");
                self.finish_round(&HashMap::new(), BTreeSet::from([self.identity.clone()]));
                return;
            }
        };
        let mut by_name: HashMap<String, Lease> = HashMap::new();
        for l in leases {
            self.observe(&l, now);
            by_name.insert(l.name_any(), l);
        }
        let mut live = BTreeSet::from([self.identity.clone()]);
        for (name, o) in &self.observed {
            if by_name.contains_key(name) && !o.expired(now) {
                live.insert(o.holder.clone());
            }
        }
        // Someone else holds a shard we think we hold: it is theirs (should not happen while
        // we renew in time, but the Lease is the truth).
        let held: Vec<u32> = self.renewed.keys().copied().collect();
        for i in held {
            let holder = by_name.get(&self.lease_name(i)).and_then(|l| l.spec.as_ref()?.holder_identity.clone());
            if holder.as_deref() != Some(self.identity.as_str()) {
                self.lose(i, "the Lease names another holder");
            }
        }
        let live_count = u32::try_from(live.len()).unwrap_or(u32::MAX).max(1);
        let fair = self.shards.div_ceil(live_count);
        // Right after start-up, wait one round before acquiring so that replicas starting
        // together see each other's member Leases instead of one of them taking everything.
        let settling = now.duration_since(self.started) < self.retry;

        let mut held: Vec<u32> = self.renewed.keys().copied().collect();
        held.sort_unstable();
        while held.len() > fair as usize {
            if let Some(i) = held.pop() {
                self.release(i, by_name.get(&self.lease_name(i))).await;
            }
        }
        for &i in &held {
            self.renew(i, by_name.get(&self.lease_name(i))).await;
        }
        if !settling {
            let mut room = (fair as usize).saturating_sub(self.renewed.len());
            // Start looking at an offset of our own, so replicas do not all race for shard 0.
            let offset = shard_of(Some(&self.identity), self.shards);
            for k in 0..self.shards {
                if room == 0 {
                    break;
                }
                let i = (offset + k) % self.shards;
                let name = self.lease_name(i);
                if self.renewed.contains_key(&i) {
                    continue;
                }
                let free = match by_name.get(&name) {
                    None => true,
                    // Ours from an earlier life of this identity (a container restarted in the
                    // same pod): taken back at once, as client-go does. That process is gone.
                    Some(l) if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.identity) => {
                        true
                    }
                    Some(_) => self.observed.get(&name).is_none_or(|o| o.expired(now)),
                };
                if free && self.acquire(i, by_name.get(&name)).await {
                    room -= 1;
                }
            }
        }
        self.renew_member(by_name.get(&member_lease_name(&self.target, &self.identity))).await;
        self.finish_round(&by_name, live);
    }

    fn finish_round(&mut self, by_name: &HashMap<String, Lease>, live: BTreeSet<String>) {
        self.gate.publish();
        let held = self.gate.held();
        let now = Instant::now();
        let leases = (0..self.shards)
            .map(|i| {
                let lease = self.lease_name(i);
                let holder = by_name
                    .get(&lease)
                    .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
                    .or_else(|| held.contains(&i).then(|| self.identity.clone()))
                    .unwrap_or_default();
                let expired = self.observed.get(&lease).is_none_or(|o| o.expired(now));
                ShardView { shard: i, lease, holder, expired: expired && !held.contains(&i), mine: held.contains(&i) }
            })
            .collect();
        let live_count = u32::try_from(live.len()).unwrap_or(u32::MAX).max(1);
        self.metrics.set(held.len(), live.len());
        *lock(&self.view) = HaView {
            enabled: true,
            identity: self.identity.clone(),
            namespace: self.namespace.clone(),
            shards: self.shards,
            fair_share: self.shards.div_ceil(live_count),
            live_replicas: live.into_iter().collect(),
            leases,
        };
    }

    async fn acquire(&mut self, i: u32, current: Option<&Lease>) -> bool {
        let name = self.lease_name(i);
        let started = Instant::now();
        let result = match current {
            None => {
                let lease = self.new_lease(&name, "shard", self.spec(None, 0));
                self.call(&name, self.api.create(&PostParams::default(), &lease)).await
            }
            Some(old) => {
                let spec = old.spec.clone().unwrap_or_default();
                let mut transitions = spec.lease_transitions.unwrap_or(0);
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    transitions = transitions.saturating_add(1);
                }
                let mut lease = old.clone();
                lease.spec = Some(self.spec(None, transitions));
                self.call(&name, self.api.replace(&name, &PostParams::default(), &lease)).await
            }
        };
        match result {
            Ok(lease) => {
                self.observe(&lease, started);
                self.renewed.insert(i, started);
                self.gate.set_valid_until(i, Some(started + self.renew_deadline));
                self.metrics.transition("acquired");
                let previous = current.and_then(|l| l.spec.as_ref()?.holder_identity.clone()).unwrap_or_default();
                info!(shard = i, lease = %name, previous_holder = %previous, "acquired a shard");
                true
            }
            Err(e) => {
                // Another replica was faster (409), or the API failed: look again next round.
                debug!(shard = i, error = %e, "cannot acquire a shard");
                false
            }
        }
    }

    async fn renew(&mut self, i: u32, current: Option<&Lease>) {
        let name = self.lease_name(i);
        let Some(old) = current else {
            self.lose(i, "the Lease is gone");
            return;
        };
        let started = Instant::now();
        let spec = old.spec.clone().unwrap_or_default();
        let mut lease = old.clone();
        lease.spec = Some(self.spec(spec.acquire_time, spec.lease_transitions.unwrap_or(0)));
        match self.call(&name, self.api.replace(&name, &PostParams::default(), &lease)).await {
            Ok(lease) => {
                self.observe(&lease, started);
                self.renewed.insert(i, started);
                self.gate.set_valid_until(i, Some(started + self.renew_deadline));
            }
            Err(Error::Lease { source, .. }) if matches!(&*source, kube::Error::Api(s) if s.code == 409) => {
                self.lose(i, "the Lease changed under us");
            }
            // Kept until the renew deadline: the next round tries again.
            Err(e) => warn!(shard = i, error = %e, "cannot renew a shard's Lease; retrying"),
        }
    }

    async fn release(&mut self, i: u32, current: Option<&Lease>) {
        let name = self.lease_name(i);
        self.renewed.remove(&i);
        self.gate.set_valid_until(i, None);
        self.gate.publish();
        self.gate.drain(i, self.renew_deadline).await;
        self.metrics.transition("released");
        let Some(old) = current else { return };
        let spec = old.spec.clone().unwrap_or_default();
        let mut lease = old.clone();
        // As client-go releases: no holder, a one-second duration, the transition count kept.
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            acquire_time: spec.acquire_time,
            lease_transitions: spec.lease_transitions,
            ..LeaseSpec::default()
        });
        match self.call(&name, self.api.replace(&name, &PostParams::default(), &lease)).await {
            Ok(_) => info!(shard = i, lease = %name, "released a shard"),
            Err(e) => warn!(shard = i, error = %e, "cannot release a shard's Lease; it expires by itself"),
        }
    }

    async fn renew_member(&mut self, current: Option<&Lease>) {
        let name = member_lease_name(&self.target, &self.identity);
        let result = match current {
            None => {
                let lease = self.new_lease(&name, "member", self.spec(None, 0));
                self.call(&name, self.api.create(&PostParams::default(), &lease)).await
            }
            Some(old) => {
                let mut lease = old.clone();
                let acquire = old.spec.as_ref().and_then(|s| s.acquire_time.clone());
                lease.spec = Some(self.spec(acquire, 0));
                self.call(&name, self.api.replace(&name, &PostParams::default(), &lease)).await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "cannot renew the member Lease");
        }
    }

    /// On shutdown: stop writing, wait for the syncs in flight, release every held Lease, and
    /// delete the member Lease so the others count one replica less at once.
    async fn release_all(&mut self) {
        let held: Vec<u32> = self.renewed.keys().copied().collect();
        for &i in &held {
            self.gate.set_valid_until(i, None);
        }
        self.gate.publish();
        let selector = format!("{HA_TARGET_LABEL}={}", self.target);
        let leases = match self.call("(list)", self.api.list(&ListParams::default().labels(&selector))).await {
            Ok(l) => l.items,
            Err(e) => {
                warn!(error = %e, "cannot read the Leases to release them; they expire by themselves");
                Vec::new()
            }
        };
        for i in held {
            let name = self.lease_name(i);
            let current = leases.iter().find(|l| l.name_any() == name).cloned();
            self.release(i, current.as_ref()).await;
        }
        let member = member_lease_name(&self.target, &self.identity);
        if let Err(e) = self.call(&member, self.api.delete(&member, &DeleteParams::default())).await {
            debug!(error = %e, "cannot delete the member Lease");
        }
        self.metrics.set(0, 0);
        info!(identity = %self.identity, "released every Lease");
    }
}

/// One Lease of a target, as `downsync shards` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The Lease.
    pub name: String,
    /// `shard` or `member`.
    pub role: String,
    /// Its holder (empty: released).
    pub holder: String,
    /// When the holder last renewed it (RFC 3339), as the holder's clock wrote it.
    pub renewed: String,
    /// Seconds since that renewal, on this machine's clock (rough: clocks differ).
    pub age_seconds: i64,
    /// Its duration in seconds.
    pub duration_seconds: i64,
}

/// Reads every Lease of `target` in `namespace`: which replica holds which shard, and the
/// replicas alive. Shards first, in order.
pub async fn read_leases(client: Client, namespace: &str, target: &str) -> Result<Vec<LeaseRow>> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let selector = format!("{HA_TARGET_LABEL}={target}");
    let leases = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::Lease { name: format!("{namespace}/(list)"), source: Box::new(e) })?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows: Vec<LeaseRow> = leases
        .items
        .iter()
        .map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            let role = l.labels().get(HA_ROLE_LABEL).cloned().unwrap_or_default();
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            LeaseRow {
                name: l.name_any(),
                role,
                holder: spec.holder_identity.unwrap_or_default(),
                renewed: renewed.map(|t| t.to_string()).unwrap_or_default(),
                age_seconds: renewed.map_or(-1, |t| now.duration_since(t).as_secs()),
                duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
            }
        })
        .collect();
    // Shards by number, then members by name.
    let shard_no = |r: &LeaseRow| r.name.rsplit_once("-shard-").and_then(|(_, n)| n.parse::<u32>().ok());
    rows.sort_by(|a, b| (a.role != "shard", shard_no(a), &a.name).cmp(&(b.role != "shard", shard_no(b), &b.name)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_of_a_namespace_is_stable_and_spread() {
        // Fixed values: a change of hash would move every object to another shard on upgrade.
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            shard_of(Some("a"), u32::MAX),
            u32::try_from(0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)).unwrap()
        );
        assert_eq!((shard_of(Some("team-a"), 8), shard_of(Some("team-b"), 8)), (6, 3));
        assert_eq!(shard_of(None, 8), shard_of(Some(""), 8));
        let mut counts = [0u32; 4];
        for n in 0..400 {
            counts[shard_of(Some(&format!("ns-{n}")), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(shard_of(Some("anything"), 1), 0);
    }

    #[test]
    fn lease_names_follow_the_target() {
        assert_eq!(shard_lease_name("east", 1, 0), "downsync-east");
        assert_eq!(shard_lease_name("east", 4, 3), "downsync-east-shard-3");
        assert_eq!(member_lease_name("east", "Pod_1.x"), "downsync-east-member-pod-1-x");
    }

    #[test]
    fn settings_must_leave_a_holder_time_to_stop_before_others_take_over() {
        let ok = HaConfig { enabled: true, ..HaConfig::default() };
        ok.validate().unwrap();
        let bad = HaConfig { renew_deadline_seconds: 15, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("leaseDurationSeconds"));
        let bad = HaConfig { retry_period_seconds: 10, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("renewDeadlineSeconds"));
        let bad = HaConfig { shards: 0, ..ok };
        assert!(bad.validate().unwrap_err().to_string().contains("ha.shards"));
    }

    #[tokio::test]
    async fn a_single_process_holds_everything_and_a_replica_nothing_until_it_acquires() {
        let single = ShardGate::single();
        assert!(single.enter(0).await.is_some());
        let gate = ShardGate::sharded(4);
        assert!(gate.enter(2).await.is_none());
        gate.set_valid_until(2, Some(Instant::now() + Duration::from_secs(60)));
        assert!(gate.enter(2).await.is_some());
        assert_eq!(gate.held(), BTreeSet::from([2]));
    }

    #[tokio::test]
    async fn a_holder_stops_writing_at_its_renew_deadline_without_the_lease_loop() {
        let gate = ShardGate::sharded(2);
        gate.set_valid_until(1, Some(Instant::now() + Duration::from_millis(50)));
        assert!(gate.holds(1));
        // Nobody touches the gate: the deadline alone ends the right to write.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!gate.holds(1));
        assert!(gate.enter(1).await.is_none());
    }

    #[test]
    fn a_shard_lost_and_regained_between_two_looks_is_seen_as_gained_again() {
        let gate = ShardGate::sharded(1);
        let rx = gate.subscribe();
        let later = Instant::now() + Duration::from_secs(60);
        gate.set_valid_until(0, Some(later));
        gate.publish();
        let first = rx.borrow().clone();
        // Lost (renew deadline) and regained before the controller looked: a new epoch.
        gate.set_valid_until(0, None);
        gate.set_valid_until(0, Some(later));
        gate.publish();
        assert_ne!(*rx.borrow(), first);
        // A renewal is not a regain.
        let second = rx.borrow().clone();
        gate.set_valid_until(0, Some(later + Duration::from_secs(1)));
        gate.publish();
        assert_eq!(*rx.borrow(), second);
    }

    #[tokio::test]
    async fn a_release_waits_for_the_sync_in_flight() {
        let gate = Arc::new(ShardGate::sharded(1));
        gate.set_valid_until(0, Some(Instant::now() + Duration::from_secs(60)));
        let guard = gate.enter(0).await.unwrap();
        gate.set_valid_until(0, None);
        let g = Arc::clone(&gate);
        let drain = tokio::spawn(async move { g.drain(0, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drain.is_finished(), "the release must wait for the reconcile holding the shard");
        drop(guard);
        drain.await.unwrap();
        assert!(gate.enter(0).await.is_none());
    }
}
