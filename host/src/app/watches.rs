//! What makes an object be looked at: a reflector per kind and side whose events become queue
//! keys, and the sets of keys for the initial sync, the resyncs and a rule change.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::cache::ObjectCache;
use super::config::RunConfig;
use super::context::{Controller, Watched, lock};
use super::keys::{WorkKey, down_key, up_key};
use super::packing::{compact_managed_fields, strip_managed_fields};
use super::startup::Resolved;
use crate::kube::lists::{self, ListModes};
use crate::kube::{reconnect, upstream};
use crate::sync::{ownership, workspaces};

/// The event stream of one reflector.
pub use crate::kube::lists::EventStream;

/// Keys an object read from many kcp workspaces by its workspace as well: its namespace
/// becomes `<logical cluster>/<namespace>` ([`workspaces::qualify_namespace`]), in the cache
/// and so in every key, since two workspaces' `default/app` are two objects. An object without
/// a valid `kcp.io/cluster` keeps its namespace.
pub fn qualify_by_workspace(o: &mut DynamicObject) {
    let cluster = o.metadata.annotations.as_ref().and_then(|a| a.get(workspaces::CLUSTER_ANNOTATION));
    let Some(cluster) = cluster.filter(|c| workspaces::is_logical_cluster_name(c)) else { return };
    if let Some(ns) = &o.metadata.namespace {
        o.metadata.namespace = Some(workspaces::qualify_namespace(cluster, ns));
    }
}

/// The two reflectors of one kind: its caches, and the event streams that fill them. With
/// `many_workspaces`, upstream objects are keyed by their kcp workspace too.
pub fn kind_streams(
    config: &RunConfig,
    resolved: Resolved,
    (up, down): (&Client, &Client),
    modes: &ListModes,
    many_workspaces: bool,
) -> (Arc<Watched>, EventStream, EventStream) {
    let Resolved { config: resource, up_ar, down_ar, down_resource } = resolved;
    let owned = ownership::owned_selector(&config.sync.ownership);
    let client_intent = config.client_intent();
    let mut up_wc = watcher::Config::default();
    if let Some(sel) = &resource.label_selector {
        up_wc = up_wc.labels(sel);
    }
    let (up_store, mut up_writer) = ObjectCache::new();
    let up_api: Api<DynamicObject> = Api::all_with(up.clone(), &up_ar);
    let up_stream = lists::watch(up_api, up_wc, Arc::clone(&modes.up), "upstream", resource.kind.clone())
        .backoff(reconnect::backoff())
        .modify(move |o| {
            if many_workspaces {
                qualify_by_workspace(o);
            }
            compact_managed_fields(o, client_intent);
        })
        .map(move |ev| {
            if let Ok(e) = &ev {
                up_writer.apply(e);
            }
            ev
        });

    let (down_store, mut down_writer) = ObjectCache::new();
    let down_api: Api<DynamicObject> = Api::all_with(down.clone(), &down_ar);
    let down_wc = watcher::Config::default().labels(&owned);
    let down_stream = lists::watch(down_api, down_wc, Arc::clone(&modes.down), "downstream", resource.kind.clone())
        .backoff(reconnect::backoff())
        .modify(strip_managed_fields)
        .map(move |ev| {
            if let Ok(e) = &ev {
                down_writer.apply(e);
            }
            ev
        });
    let watched = Watched { config: resource, up_ar, down_ar, down_resource, up_store, down_store };
    (Arc::new(watched), up_stream.boxed(), down_stream.boxed())
}

/// Whether a watch failed because the kind is not served (any more): its CRD was deleted.
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// The side of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Up,
    Down,
}

impl Side {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Up => "upstream",
            Self::Down => "downstream",
        }
    }
}

impl Controller {
    /// Watches `resources[index]` from now on. The kind is served from its caches at once with
    /// `now` (at start: the initial sync waits for every cache), else once both caches have
    /// listed, when its keys are queued (a kind whose CRD came later).
    pub(super) fn watch_kind(self: &Arc<Self>, index: usize, resolved: Resolved, now: bool) {
        let Some(slot) = self.kinds.get(index) else { return };
        let (up, down) = (self.upstream.client(), self.syncer.downstream().client());
        let (watched, up_stream, down_stream) =
            kind_streams(&self.config, resolved, (up, down), &self.list_modes, self.many_workspaces);
        if now {
            slot.set(Some(Arc::clone(&watched)));
        }
        let task = tokio::spawn(Arc::clone(self).drive_kind(index, watched, up_stream, down_stream, now));
        if let Some(old) = lock(&slot.task).replace(task) {
            old.abort();
        }
    }

    /// Drives one kind's reflectors: each event queues the upstream key it concerns. Ends when
    /// a side stops serving the kind, which then waits for its CRD again.
    async fn drive_kind(
        self: Arc<Self>,
        index: usize,
        watched: Arc<Watched>,
        up: EventStream,
        down: EventStream,
        mut live: bool,
    ) {
        let mut events = futures::stream::select(up.map(|e| (Side::Up, e)), down.map(|e| (Side::Down, e)));
        let ready = async {
            let _ = watched.up_store.wait_until_ready().await;
            let _ = watched.down_store.wait_until_ready().await;
        };
        let mut ready = std::pin::pin!(ready);
        loop {
            tokio::select! {
                () = &mut ready, if !live => {
                    live = true;
                    self.kind_watched(index, &watched);
                }
                ev = events.next() => {
                    let Some((side, ev)) = ev else { return };
                    if let Err(e) = &ev
                        && not_served(e)
                    {
                        self.kind_gone(index, side);
                        return;
                    }
                    if live {
                        match side {
                            Side::Up => self.on_upstream_event(index, &watched, ev),
                            Side::Down => self.on_downstream_event(index, &watched, ev),
                        }
                    }
                }
            }
        }
    }

    /// Stops every kind's reflectors.
    pub(super) fn stop_watches(&self) {
        for slot in &self.kinds {
            if let Some(task) = lock(&slot.task).take() {
                task.abort();
            }
        }
    }

    fn on_upstream_event(
        &self,
        index: usize,
        w: &Watched,
        ev: std::result::Result<Event<DynamicObject>, watcher::Error>,
    ) {
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
                    for key in w.down_store.map_metadata(|d| Some(down_key(index, d))) {
                        self.queue.add(key);
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

    fn on_downstream_event(
        &self,
        index: usize,
        w: &Watched,
        ev: std::result::Result<Event<DynamicObject>, watcher::Error>,
    ) {
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
        let key = crate::sync::DownstreamKey::new(&w.down_resource, o.metadata.namespace.as_deref(), &o.name_any());
        self.syncer.state().has_resource_version(&key, rv)
    }

    fn reconnected(&self, changed: bool) {
        if changed {
            self.retry_everything_now();
        }
    }

    /// Waits until every watched kind's reflectors have listed once.
    pub(super) async fn wait_stores(&self) {
        for (_, w) in self.all_watched() {
            // A dropped writer means the reflector task ended: nothing more will come.
            let _ = w.up_store.wait_until_ready().await;
            let _ = w.down_store.wait_until_ready().await;
        }
    }

    /// Every selected upstream object and every owned downstream copy.
    pub(super) fn all_keys(&self) -> HashSet<WorkKey> {
        off_worker(|| {
            let mut keys = HashSet::new();
            for (i, w) in self.all_watched() {
                keys.extend(self.walk_keys(i, &w));
            }
            keys
        })
    }

    /// The selected upstream objects and owned downstream copies of one kind.
    pub(super) fn keys_of(&self, i: usize, w: &Watched) -> HashSet<WorkKey> {
        off_worker(|| self.walk_keys(i, w))
    }

    fn walk_keys(&self, i: usize, w: &Watched) -> HashSet<WorkKey> {
        let mut keys: HashSet<WorkKey> =
            w.up_store.map_metadata(|o| self.selected(w, o).then(|| up_key(i, o))).into_iter().collect();
        keys.extend(w.down_store.map_metadata(|o| Some(down_key(i, o))));
        keys
    }

    /// The keys of the kinds whose rules changed: a swap of a Deployment rule revisits only
    /// Deployments.
    pub(super) fn keys_of_kinds(&self, kinds: &HashSet<usize>) -> HashSet<WorkKey> {
        self.all_keys().into_iter().filter(|k| matches!(k, WorkKey::Object(o) if kinds.contains(&o.resource))).collect()
    }
}

/// Runs `f`, a walk over every cached object (a second or more at 100,000), with the async
/// worker's other tasks handed to another worker meanwhile; inline where there is no other.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("x", "NotFound").with_code(code))
    }

    #[test]
    fn a_404_from_a_list_or_a_watch_means_the_kind_is_not_served_and_nothing_else_does() {
        let cases: Vec<(watcher::Error, bool)> = vec![
            (watcher::Error::InitialListFailed(kube::Error::Api(mk_status(404))), true),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(404))), true),
            (watcher::Error::WatchFailed(kube::Error::Api(mk_status(404))), true),
            (watcher::Error::WatchError(mk_status(404)), true),
            (watcher::Error::InitialListFailed(kube::Error::Api(mk_status(403))), false),
            (watcher::Error::WatchError(mk_status(410)), false),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(503))), false),
            (watcher::Error::NoResourceVersion, false),
        ];
        for (e, want) in cases {
            assert_eq!(not_served(&e), want, "{e}");
        }
    }
}
