//! What looks at objects again without a watch event: the periodic resync, a rule change for
//! the kinds it concerns, and shards this replica acquires.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::{debug, info};

use super::context::Controller;
use super::keys::WorkKey;
use crate::plugin::{PluginRegistry, PluginSet};

impl Controller {
    pub(super) async fn resync_loop(self: Arc<Self>) {
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
    pub(super) async fn watch_rules(self: Arc<Self>, rules: Arc<PluginRegistry>) {
        let mut changes = rules.subscribe();
        // A shadow version starting for a kind also counts: its objects are looked at again so
        // the shadow sees each of them, and the active rules still decide every write.
        let fingerprints = |set: &PluginSet| -> Vec<String> {
            self.kinds
                .iter()
                .map(|s| {
                    let (g, k) = (s.config.group(), &s.config.kind);
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

    /// Queues the objects (and created namespaces) of shards this replica just acquired, from
    /// the warm caches: what the previous holder left in step is compared and not written.
    pub(super) async fn watch_shards(self: Arc<Self>) {
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
            for key in self.created_namespace_keys().await {
                if gained.contains(&self.shard_of_key(&key)) {
                    self.queue.add(key);
                }
            }
        }
    }
}
