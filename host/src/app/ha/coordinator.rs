//! The Lease loop: client-go's leader election per shard, with a member Lease per replica and
//! a fair share of shards each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::config::{
    Error, HA_ROLE_LABEL, HA_TARGET_LABEL, HaConfig, Result, member_lease_name, shard_lease_name, shard_of,
};
use super::gate::{ShardGate, lock};
use super::verdicts::{SharedVerdicts, TRIALS_ANNOTATION, VERDICTS_ANNOTATION};
use super::view::{HaMetrics, HaView, ShardView, SharedView};

/// Sets (or, with `None`, removes) one annotation of a Lease about to be written.
fn annotate(lease: &mut Lease, key: &str, value: Option<String>) {
    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => {
            annotations.insert(key.into(), v);
        }
        None => {
            annotations.remove(key);
        }
    }
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
    /// Plugin rollout verdicts shared through the Leases.
    verdicts: Arc<SharedVerdicts>,
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
        metrics.set_shards(config.shard_count());
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
            verdicts: Arc::default(),
        }
    }

    /// Shares plugin rollout verdicts through the Leases (see [`SharedVerdicts`]).
    #[must_use]
    pub fn with_verdicts(mut self, verdicts: Arc<SharedVerdicts>) -> Self {
        self.verdicts = verdicts;
        self
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
        let all: Vec<&Lease> = by_name.values().collect();
        self.verdicts.observe(&all, &member_lease_name(&self.target, &self.identity), &self.lease_name(0));
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
                let mut lease = self.new_lease(&name, "shard", self.spec(None, 0));
                self.annotate_decisions(i, &mut lease);
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
                self.annotate_decisions(i, &mut lease);
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

    /// The holder of shard 0 writes the rollout decisions on its Lease, for every replica to
    /// follow (kept there when none are known here: a new holder learns them first).
    fn annotate_decisions(&self, i: u32, lease: &mut Lease) {
        if i == 0
            && let Some(decisions) = self.verdicts.decisions_annotation()
        {
            annotate(lease, VERDICTS_ANNOTATION, Some(decisions));
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
        self.annotate_decisions(i, &mut lease);
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
                let mut lease = self.new_lease(&name, "member", self.spec(None, 0));
                annotate(&mut lease, TRIALS_ANNOTATION, self.verdicts.counts_annotation());
                self.call(&name, self.api.create(&PostParams::default(), &lease)).await
            }
            Some(old) => {
                let mut lease = old.clone();
                let acquire = old.spec.as_ref().and_then(|s| s.acquire_time.clone());
                lease.spec = Some(self.spec(acquire, 0));
                annotate(&mut lease, TRIALS_ANNOTATION, self.verdicts.counts_annotation());
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
