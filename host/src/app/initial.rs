//! The initial sync: every key queued once at start (owned copies without an upstream object
//! after a grace period), counted down as workers finish them, and reported.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::info;

use super::context::{Controller, lock};
use super::keys::WorkKey;
use super::run::Summary;

impl Controller {
    /// Queues every key for the initial sync; owned copies without an upstream object wait out
    /// the grace period, and namespaces downsync created are checked for cleanup.
    pub(super) async fn enqueue_initial(&self) {
        let keys = self.all_keys();
        let orphans = self.hold_orphans(&keys);
        if orphans > 0 {
            info!(
                count = orphans,
                grace_seconds = self.config.orphan_grace().as_secs(),
                "owned downstream objects without an upstream object; deleting them after the grace period"
            );
        }
        self.initial_total.store(keys.len() as u64, Ordering::Relaxed);
        info!(objects = keys.len(), kinds = self.all_watched().len(), "initial sync started");
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
        for key in self.created_namespace_keys().await {
            self.queue.add_after(key, self.config.orphan_grace().max(Duration::from_secs(1)));
        }
    }

    pub(super) async fn wait_initial(&self) {
        while self.health.not_ready_reason().is_some() && !lock(&self.initial_pending).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) fn initial_done_with(&self, key: &WorkKey, ok: bool) {
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

    pub(super) async fn report_progress(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.metrics.set_queue_depth(self.queue.len());
            let pending = lock(&self.initial_pending).len() as u64;
            if pending > 0 {
                let total = self.initial_total.load(Ordering::Relaxed);
                info!("initial sync: {}/{total} objects", total - pending);
            }
        }
    }

    /// What the run did, for the exit code: the initial sync's counts.
    pub(super) fn summary(&self) -> Summary {
        let failed = self.initial_failed.load(Ordering::Relaxed);
        let total = self.initial_total.load(Ordering::Relaxed);
        let pending = lock(&self.initial_pending).len() as u64;
        info!("stopped");
        Summary { synced: total.saturating_sub(failed + pending), failed }
    }
}
