//! The syncer's Prometheus metrics: syncs by kind, operation and result; failures by kind and
//! reason; conflicts; retries; queue depth; sync latency; initial-sync progress. The plugin metrics register beside them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sync::SyncResult;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    kind: String,
    operation: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    kind: String,
    manager: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabels {
    kind: String,
    api_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The syncer's metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    syncs: Family<SyncLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    conflicts: Family<KindLabels, Counter>,
    retries: Family<KindLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    busy: Family<KindLabels, Gauge>,
    initial: Family<StateLabels, Gauge<u64, AtomicU64>>,
    worker_panics: Counter,
    drift: Family<DriftLabels, Counter>,
    dry_runs: Family<KindLabels, Counter>,
    served: Family<ServedLabels, Gauge>,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            syncs: Family::default(),
            failures: Family::default(),
            conflicts: Family::default(),
            retries: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            queue_depth: Gauge::default(),
            busy: Family::default(),
            initial: Family::default(),
            worker_panics: Counter::default(),
            drift: Family::default(),
            dry_runs: Family::default(),
            served: Family::default(),
        }
    }
}

impl SyncMetrics {
    /// Registers the metrics (prefixed `downsync_`) into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("downsync");
        r.register("syncs", "Object syncs by kind, operation and result", self.syncs.clone());
        r.register(
            "sync_failures",
            "Failed reconciles by kind and reason (the reason of the Warning Event, such as AlreadyAllocated)",
            self.failures.clone(),
        );
        r.register("conflicts", "409 conflicts met while writing downstream", self.conflicts.clone());
        r.register("retries", "Syncs queued again after a failure", self.retries.clone());
        r.register("sync_duration_seconds", "Time to sync one object", self.duration.clone());
        r.register("queue_depth", "Objects waiting for a worker", self.queue_depth.clone());
        r.register(
            "workers_busy",
            "Workers syncing an object of the kind now (at most workersPerKind each)",
            self.busy.clone(),
        );
        r.register("initial_sync_objects", "Initial sync progress: synced and total objects", self.initial.clone());
        r.register("worker_panics", "Sync workers that panicked; the key was queued again", self.worker_panics.clone());
        r.register(
            "drift",
            "Fields changed downstream by another writer since downsync's write, by kind, manager and the policy's action (revert or report)",
            self.drift.clone(),
        );
        r.register(
            "dry_runs",
            "Server-side dry runs made to tell a drift from what the downstream server adds at a write",
            self.dry_runs.clone(),
        );
        r.register(
            "kind_served",
            "Whether a configured kind is served on both sides and synced (1), or waits for one side to serve it, \
             its CRD not installed or not established yet (0)",
            self.served.clone(),
        );
    }

    /// Records whether a configured kind is served on both sides (and so synced).
    pub fn set_served(&self, kind: &str, api_version: &str, served: bool) {
        let labels = ServedLabels { kind: kind.into(), api_version: api_version.into() };
        self.served.get_or_create(&labels).set(i64::from(served));
    }

    /// Records the outcome of one sync.
    pub fn record(&self, kind: &str, result: &SyncResult, seconds: f64) {
        // A failed write never reached its operation: name what was attempted instead.
        let operation = match &result.error {
            Some(crate::sync::SyncError::Api { operation, .. }) => operation,
            Some(crate::sync::SyncError::Rule(_)) => "rule",
            Some(crate::sync::SyncError::NotOwned { .. }) => "conflict",
            Some(_) => "invalid",
            None => result.operation.as_str(),
        };
        let labels = SyncLabels {
            kind: kind.into(),
            operation: operation.into(),
            result: if result.is_err() { "error" } else { "ok" }.into(),
        };
        self.syncs.get_or_create(&labels).inc();
        let kind = KindLabels { kind: kind.into() };
        if !result.conflicts.is_empty() {
            // One per retried write; the last attempt succeeded or gave up.
            self.conflicts.get_or_create(&kind).inc_by(u64::from(result.attempts.saturating_sub(1).max(1)));
        }
        if result.dry_runs > 0 {
            self.dry_runs.get_or_create(&kind).inc_by(u64::from(result.dry_runs));
        }
        self.duration.get_or_create(&kind).observe(seconds);
        for f in &result.drift {
            for manager in &f.manager_names {
                let labels =
                    DriftLabels { kind: kind.kind.clone(), manager: manager.clone(), action: f.action.as_str().into() };
                self.drift.get_or_create(&labels).inc();
            }
        }
    }

    /// Records a failure outside the core syncer (namespace creation, finalizer, bad input).
    pub fn record_failure(&self, kind: &str, operation: &str) {
        let labels = SyncLabels { kind: kind.into(), operation: operation.into(), result: "error".into() };
        self.syncs.get_or_create(&labels).inc();
    }

    /// Counts a sync worker that panicked (and was kept serving).
    pub fn worker_panicked(&self) {
        self.worker_panics.inc();
    }

    /// Worker panics so far.
    pub fn worker_panics(&self) -> u64 {
        self.worker_panics.get()
    }

    /// Counts a failed reconcile, by the reason its Event carries.
    pub fn failed(&self, kind: &str, reason: &str) {
        self.failures.get_or_create(&FailureLabels { kind: kind.into(), reason: reason.into() }).inc();
    }

    /// Counts a sync queued again after a failure.
    pub fn retried(&self, kind: &str) {
        self.retries.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    /// Sets the queue depth.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts a worker taking (`+1`) or leaving (`-1`) an object of `kind`.
    pub fn busy(&self, kind: &str, delta: i64) {
        self.busy.get_or_create(&KindLabels { kind: kind.into() }).inc_by(delta);
    }

    /// Sets initial-sync progress.
    pub fn set_initial(&self, synced: u64, total: u64) {
        self.initial.get_or_create(&StateLabels { state: "synced".into() }).set(synced);
        self.initial.get_or_create(&StateLabels { state: "total".into() }).set(total);
    }

    /// Syncs of one kind, operation and result so far.
    pub fn syncs(&self, kind: &str, operation: &str, result: &str) -> u64 {
        self.syncs
            .get_or_create(&SyncLabels { kind: kind.into(), operation: operation.into(), result: result.into() })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Operation;

    #[test]
    fn a_recorded_sync_shows_in_the_exposition() {
        let m = SyncMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut r = SyncResult::new(None, Operation::Updated);
        r.attempts = 3;
        r.conflicts.push("/data".into());
        m.record("ConfigMap", &r, 0.01);
        m.set_queue_depth(4);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"downsync_syncs_total{kind="ConfigMap",operation="updated",result="ok"} 1"#), "{text}");
        assert!(text.contains(r#"downsync_conflicts_total{kind="ConfigMap"} 2"#), "{text}");
        assert!(text.contains("downsync_queue_depth 4"), "{text}");
        assert_eq!(m.syncs("ConfigMap", "updated", "ok"), 1);
    }
}
