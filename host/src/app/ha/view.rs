//! What HA shows: its metrics, and the view behind `/shards`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::gate::lock;

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
    /// Records how many shards there are in all.
    pub(super) fn set_shards(&self, n: u32) {
        self.shards.set(i64::from(n));
    }

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

    pub(super) fn transition(&self, event: &str) {
        self.transitions.get_or_create(&EventLabels { event: event.into() }).inc();
    }

    pub(super) fn set(&self, held: usize, live: usize) {
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
