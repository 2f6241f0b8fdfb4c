//! What makes an object be looked at: a reflector per kind and side whose events become queue
//! keys, and the sets of keys for the initial sync, the resyncs and a rule change.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::config::RunConfig;
use super::context::{Controller, Watched};
use super::keys::{WorkKey, down_key, up_key};
use super::packing::{compact_managed_fields, pack, strip_managed_fields};
use super::startup::Resolved;
use crate::kube::{reconnect, upstream};
use crate::sync::{ownership, workspaces};

/// Objects per page of a watcher's initial list. A page is decoded whole (its text, then a
/// `serde_json::Value` tree per object, managedFields included, before [`pack`] and
/// [`compact_managed_fields`] shrink them), and every reflector of both sides lists at once on
/// a start: with kube's default of 500, the pages in flight were 18 MiB of the 71 MiB heap peak
/// at 10,000 objects (docs/benchmarks.md, section 4). 100 cuts that by five, for four times as
/// many list requests (100 per kind and side at 10,000 objects).
const LIST_PAGE: u32 = 100;

/// The event stream of one reflector.
pub type EventStream = futures::stream::BoxStream<'static, std::result::Result<Event<DynamicObject>, watcher::Error>>;

/// Keys an object read from many kcp workspaces by its workspace as well: its namespace
/// becomes `<logical cluster>/<namespace>` ([`workspaces::qualify_namespace`]), in the cache
/// and so in every key, since two workspaces' `default/app` are two objects. An object without
/// a valid `kcp.io/cluster` keeps its namespace.
fn qualify_by_workspace(o: &mut DynamicObject) {
    let cluster = o.metadata.annotations.as_ref().and_then(|a| a.get(workspaces::CLUSTER_ANNOTATION));
    let Some(cluster) = cluster.filter(|c| workspaces::is_logical_cluster_name(c)) else { return };
    if let Some(ns) = &o.metadata.namespace {
        o.metadata.namespace = Some(workspaces::qualify_namespace(cluster, ns));
    }
}

/// Builds a reflector per kind and side: the stores, and the event streams that fill them.
/// With `many_workspaces`, upstream objects are keyed by their kcp workspace too.
pub fn reflectors(
    config: &RunConfig,
    resolved: Vec<Resolved>,
    up: &Client,
    down: &Client,
    many_workspaces: bool,
) -> (Vec<Watched>, Vec<(EventStream, EventStream)>) {
    let owned = ownership::owned_selector(&config.sync.ownership);
    let client_intent = config.client_intent();
    let mut streams = Vec::new();
    let mut watched = Vec::new();
    for Resolved { config, up_ar, down_ar, down_resource } in resolved {
        let mut up_wc = watcher::Config::default().page_size(LIST_PAGE);
        if let Some(sel) = &config.label_selector {
            up_wc = up_wc.labels(sel);
        }
        let up_writer = reflector::store::Writer::new(up_ar.clone());
        let up_store = up_writer.as_reader();
        let up_api: Api<DynamicObject> = Api::all_with(up.clone(), &up_ar);
        let up_stream = watcher::watcher(up_api, up_wc)
            .backoff(reconnect::backoff())
            .modify(move |o| {
                if many_workspaces {
                    qualify_by_workspace(o);
                }
                compact_managed_fields(o, client_intent);
            })
            .reflect(up_writer);

        let down_writer = reflector::store::Writer::new(down_ar.clone());
        let down_store = down_writer.as_reader();
        let down_api: Api<DynamicObject> = Api::all_with(down.clone(), &down_ar);
        let down_stream = watcher::watcher(down_api, watcher::Config::default().page_size(LIST_PAGE).labels(&owned))
            .backoff(reconnect::backoff())
            .modify(|o| {
                strip_managed_fields(o);
                pack(o);
            })
            .reflect(down_writer);
        streams.push((up_stream.boxed(), down_stream.boxed()));
        watched.push(Watched { config, up_ar, down_ar, down_resource, up_store, down_store });
    }
    (watched, streams)
}

/// Drives the reflectors: each event queues the upstream key it concerns.
pub fn spawn_reflectors(
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

impl Controller {
    fn on_upstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
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
                    for d in w.down_store.state() {
                        self.queue.add(down_key(index, &d));
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

    fn on_downstream_event(&self, index: usize, ev: std::result::Result<Event<DynamicObject>, watcher::Error>) {
        let Some(w) = self.watched.get(index) else { return };
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
        let key = crate::sync::ObjectKey::new(&w.down_resource, o.metadata.namespace.as_deref(), &o.name_any());
        self.syncer.state().has_resource_version(&key, rv)
    }

    fn reconnected(&self, changed: bool) {
        if changed {
            self.retry_everything_now();
        }
    }

    /// Waits until every reflector has listed once.
    pub(super) async fn wait_stores(&self) {
        for w in &self.watched {
            // A dropped writer means the reflector task ended: nothing more will come.
            let _ = w.up_store.wait_until_ready().await;
            let _ = w.down_store.wait_until_ready().await;
        }
    }

    /// Every selected upstream object and every owned downstream copy.
    pub(super) fn all_keys(&self) -> HashSet<WorkKey> {
        let mut keys = HashSet::new();
        for (i, w) in self.watched.iter().enumerate() {
            keys.extend(w.up_store.state().iter().filter(|o| self.selected(w, o)).map(|o| up_key(i, o)));
            keys.extend(w.down_store.state().iter().map(|o| down_key(i, o)));
        }
        keys
    }

    /// The keys of the kinds whose rules changed: a swap of a Deployment rule revisits only
    /// Deployments.
    pub(super) fn keys_of_kinds(&self, kinds: &HashSet<usize>) -> HashSet<WorkKey> {
        self.all_keys().into_iter().filter(|k| matches!(k, WorkKey::Object(o) if kinds.contains(&o.resource))).collect()
    }
}
