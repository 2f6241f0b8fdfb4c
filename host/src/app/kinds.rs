//! Kinds that come later: a configured kind that one side does not serve (its CRD not
//! installed or not established yet) is reported while every other kind syncs, and taken up
//! without a restart once both sides serve it; a kind whose CRD is deleted waits for it again.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{debug, error, info, warn};

use super::context::{Controller, Watched, lock};
use super::startup::{Resolution, resolve_kind};
use super::watches::Side;

/// How often waiting kinds are looked at again without a CRD event: a side whose CRDs
/// downsync may not watch, or an aggregated API (not a CRD) that comes later.
const RECHECK: Duration = Duration::from_secs(30);

/// A CRD's events come in bursts (created, then established, then other status updates):
/// one look after the burst.
const SETTLE: Duration = Duration::from_millis(300);

impl Controller {
    /// At start: watches the kinds served on both sides (the initial sync waits for their
    /// caches), and reports the others as waiting.
    pub(super) fn start_watches(self: &Arc<Self>, resolutions: Vec<Resolution>) {
        for (index, resolution) in resolutions.into_iter().enumerate() {
            match resolution {
                Resolution::Served(resolved) => {
                    self.metrics.set_served(&resolved.config.kind, &resolved.config.api_version, true);
                    self.watch_kind(index, *resolved, true);
                }
                Resolution::NotServed(side) => self.kind_waits(index, side),
            }
        }
    }

    /// Marks `resources[index]` as waiting for `side` to serve it: logged once per change, on
    /// `/readyz?verbose` and `downsync_kind_served`.
    pub(super) fn kind_waits(&self, index: usize, side: &str) {
        let Some(slot) = self.kinds.get(index) else { return };
        let line = format!(
            "kind {} is not served {side}: waiting for its CRD to be established there; every other kind syncs",
            slot.config.describe()
        );
        let changed = lock(&self.waiting.kinds).insert(index, line.clone()).as_ref() != Some(&line);
        if !changed {
            // Looked at again and still waiting for the same side: nothing new to say, and
            // nothing to wake the look-again loop for (that would make it poll).
            return;
        }
        warn!(kind = %slot.config.kind, api_version = %slot.config.api_version, side, "{line}");
        self.metrics.set_served(&slot.config.kind, &slot.config.api_version, false);
        self.health.set_waiting_kinds(self.waiting.describe());
        self.waiting.changed.notify_one();
    }

    /// A kind's caches have listed on both sides: it is synced from now on, every key of it
    /// queued (owned copies without an upstream object wait out the grace period, as at start).
    pub(super) fn kind_watched(&self, index: usize, watched: &Arc<Watched>) {
        let Some(slot) = self.kinds.get(index) else { return };
        slot.set(Some(Arc::clone(watched)));
        lock(&self.waiting.kinds).remove(&index);
        self.metrics.set_served(&slot.config.kind, &slot.config.api_version, true);
        self.health.set_waiting_kinds(self.waiting.describe());
        let keys = self.keys_of(index, watched);
        let orphans = self.hold_orphans(&keys);
        info!(kind = %slot.config.kind, api_version = %slot.config.api_version, objects = keys.len(), orphans,
            "kind is served on both sides now; syncing it");
        for k in keys {
            self.queue.add(k);
        }
    }

    /// A side stopped serving a watched kind (its CRD was deleted): its keys wait, its
    /// downstream objects are left as they are, and the kind waits for its CRD again.
    pub(super) fn kind_gone(&self, index: usize, side: Side) {
        let Some(slot) = self.kinds.get(index) else { return };
        slot.set(None);
        // Writes that failed as the CRD went are not this kind's state any more: its keys
        // start afresh once it is served again.
        lock(&self.last_failure).retain(|k, _| !matches!(k, super::keys::WorkKey::Object(o) if o.resource == index));
        self.kind_waits(index, side.name());
    }

    /// Takes up the kinds that wait: looks again when a CRD changes on either side (watched
    /// while a kind waits, where downsync may list CRDs) and every [`RECHECK`]; never polls
    /// tightly.
    pub(super) async fn take_up_later_kinds(self: Arc<Self>) {
        loop {
            if self.waiting.indices().is_empty() {
                self.waiting.changed.notified().await;
                continue;
            }
            let (up, down) = (self.upstream.client().clone(), self.syncer.downstream().client().clone());
            let mut crds = futures::stream::select(crd_changes(up), crd_changes(down));
            let mut recheck = tokio::time::interval(RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            recheck.tick().await;
            while !self.waiting.indices().is_empty() {
                self.look_again().await;
                if self.waiting.indices().is_empty() {
                    break;
                }
                tokio::select! {
                    Some(()) = crds.next() => {
                        tokio::time::sleep(SETTLE).await;
                        // Take what came meanwhile, without waiting.
                        while let Some(Some(())) = crds.next().now_or_never() {}
                    }
                    _ = recheck.tick() => {}
                    () = self.waiting.changed.notified() => {}
                }
            }
        }
    }

    /// Resolves every waiting kind again; those served on both sides start their watches.
    async fn look_again(self: &Arc<Self>) {
        debug!(kinds = self.waiting.indices().len(), "looking again at the kinds that wait to be served");
        for index in self.waiting.indices() {
            let (up, down) = (self.upstream.client(), self.syncer.downstream().client());
            match resolve_kind(&self.config, index, up, down).await {
                Ok(Resolution::Served(resolved)) => {
                    if self.many_workspaces && !resolved.down_resource.namespaced {
                        error!(kind = %resolved.config.kind, "{} is cluster-scoped, and objects of one name in many \
                            workspaces would be one downstream object; it is not synced", resolved.config.describe());
                        lock(&self.waiting.kinds).remove(&index);
                        continue;
                    }
                    debug!(kind = %resolved.config.kind, "served on both sides; listing it");
                    lock(&self.waiting.kinds).remove(&index);
                    self.watch_kind(index, *resolved, false);
                }
                Ok(Resolution::NotServed(side)) => self.kind_waits(index, side),
                Err(e) => {
                    let key = format!("{e}");
                    if lock(&self.waiting.kinds).get(&index) != Some(&key) {
                        warn!(error = %e, "a kind served later cannot be synced yet");
                        lock(&self.waiting.kinds).insert(index, key);
                        self.health.set_waiting_kinds(self.waiting.describe());
                    }
                }
            }
        }
    }
}

/// A tick per change of any CRD on one side. Where downsync may not list CRDs there, the
/// watch keeps failing (with kube's backoff, up to half a minute apart) and [`RECHECK`] is
/// what finds a kind.
fn crd_changes(client: Client) -> futures::stream::BoxStream<'static, ()> {
    let api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|ev| async move {
            match ev {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => Some(()),
                Ok(_) => None,
                Err(e) => {
                    debug!(error = %e, "cannot watch CustomResourceDefinitions; looking again every 30 s");
                    None
                }
            }
        })
        .boxed()
}
