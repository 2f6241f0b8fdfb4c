//! Per-plugin metrics (calls, errors, latency, fuel, reloads, shadows, rollbacks), the last
//! error of each plugin, and the explain record the calls write to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::error::{CallFailure, Result};
use super::journal::Journal;
use super::types::Called;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    failure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    plugin: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

fn latency_histogram() -> Histogram {
    // 10 us .. ~0.16 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 8))
}

/// The last failed call of a plugin, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastError {
    /// The hook.
    pub hook: String,
    /// The failure class (`trap`, `out_of_fuel`, `deadline`, `memory`, `contract`, `rejected`).
    pub failure: String,
    /// The error, naming the object (never its data).
    pub message: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix_seconds: u64,
}

/// Per-plugin metrics: calls, errors by failure class, latency, fuel, refused reloads, and the
/// last error of each plugin (one entry per plugin name).
///
/// Clones share the same counters. [`Metrics::register`] exposes them in a Prometheus registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<PluginLabels, Histogram, fn() -> Histogram>,
    fuel: Family<PluginLabels, Counter>,
    reload_failures: Family<PluginLabels, Counter>,
    pull_failures: Family<PullLabels, Counter>,
    shadow_calls: Family<PluginLabels, Counter>,
    shadow_errors: Family<ErrorLabels, Counter>,
    divergences: Family<PluginLabels, Counter>,
    rollbacks: Family<PluginLabels, Counter>,
    promotions: Family<PluginLabels, Counter>,
    last_errors: Arc<Mutex<HashMap<String, LastError>>>,
    journal: Journal,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            fuel: Family::default(),
            reload_failures: Family::default(),
            pull_failures: Family::default(),
            shadow_calls: Family::default(),
            shadow_errors: Family::default(),
            divergences: Family::default(),
            rollbacks: Family::default(),
            promotions: Family::default(),
            last_errors: Arc::default(),
            journal: Journal::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics (prefixed `downsync_plugin_`) into `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("downsync_plugin");
        r.register("calls", "Plugin hook calls", self.calls.clone());
        r.register("errors", "Failed plugin calls by failure class", self.errors.clone());
        r.register("call_seconds", "Plugin call latency", self.latency.clone());
        r.register("fuel", "Fuel burnt by plugin calls", self.fuel.clone());
        r.register("reload_failures", "New plugin versions refused by the reload checks", self.reload_failures.clone());
        r.register(
            "pull_failures",
            "Failed checks and pulls of plugin sources in registries, by reason (the running version is kept)",
            self.pull_failures.clone(),
        );
        r.register("shadow_calls", "Calls of plugin versions running in shadow", self.shadow_calls.clone());
        r.register(
            "shadow_errors",
            "Failed calls of plugin versions running in shadow, by failure class (not in `errors`: nothing used them)",
            self.shadow_errors.clone(),
        );
        r.register(
            "shadow_divergences",
            "Shadow calls whose result differed from the active version's",
            self.divergences.clone(),
        );
        r.register("rollbacks", "Plugin versions taken out automatically", self.rollbacks.clone());
        r.register("promotions", "Shadow plugin versions promoted to active", self.promotions.clone());
    }

    /// Keeps the explain record of at most `max_objects` objects (0: none).
    #[must_use]
    pub fn with_journal(self, max_objects: usize) -> Self {
        self.recording_into(Journal::new(max_objects))
    }

    /// Records hook calls into `journal` instead (the counters stay shared).
    #[must_use]
    pub fn recording_into(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// The explain record.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Calls of one plugin's shadow versions so far.
    pub fn shadow_calls(&self, plugin: &str) -> u64 {
        self.shadow_calls.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    /// Divergences of one plugin's shadow versions so far.
    pub fn divergences(&self, plugin: &str) -> u64 {
        self.divergences.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    /// Versions of one plugin rolled back so far.
    pub fn rollbacks(&self, plugin: &str) -> u64 {
        self.rollbacks.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    /// Shadow versions of one plugin promoted so far.
    pub fn promotions(&self, plugin: &str) -> u64 {
        self.promotions.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    pub(crate) fn record_rollback(&self, plugin: &str) {
        self.rollbacks.get_or_create(&PluginLabels { plugin: plugin.into() }).inc();
    }

    pub(crate) fn record_promotion(&self, plugin: &str) {
        self.promotions.get_or_create(&PluginLabels { plugin: plugin.into() }).inc();
    }

    /// Calls of one hook of one plugin so far.
    pub fn calls(&self, plugin: &str, hook: &str) -> u64 {
        self.calls.get_or_create(&CallLabels { plugin: plugin.into(), hook: hook.into() }).get()
    }

    /// Failed calls of one plugin with one failure class so far.
    pub fn errors(&self, plugin: &str, failure: CallFailure) -> u64 {
        self.errors.get_or_create(&ErrorLabels { plugin: plugin.into(), failure: failure.as_str().into() }).get()
    }

    /// Fuel burnt by one plugin so far.
    pub fn fuel(&self, plugin: &str) -> u64 {
        self.fuel.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    /// The last failed call of one plugin, if any.
    pub fn last_error(&self, plugin: &str) -> Option<LastError> {
        self.last_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(plugin).cloned()
    }

    /// New versions of a plugin file refused so far.
    pub fn reload_failures(&self, plugin: &str) -> u64 {
        self.reload_failures.get_or_create(&PluginLabels { plugin: plugin.into() }).get()
    }

    /// Failed checks or pulls of `plugin`'s registry source for `reason`.
    pub fn pull_failures(&self, plugin: &str, reason: &str) -> u64 {
        self.pull_failures.get_or_create(&PullLabels { plugin: plugin.into(), reason: reason.into() }).get()
    }

    pub(crate) fn record_pull_failure(&self, plugin: &str, reason: &str) {
        self.pull_failures.get_or_create(&PullLabels { plugin: plugin.into(), reason: reason.into() }).inc();
    }

    pub(crate) fn record_reload_failure(&self, plugin: &str) {
        self.reload_failures.get_or_create(&PluginLabels { plugin: plugin.into() }).inc();
    }

    pub(crate) fn record_shadow_call(&self, plugin: &str, failure: Option<&str>) {
        self.shadow_calls.get_or_create(&PluginLabels { plugin: plugin.into() }).inc();
        if let Some(failure) = failure {
            self.shadow_errors.get_or_create(&ErrorLabels { plugin: plugin.into(), failure: failure.into() }).inc();
        }
    }

    pub(crate) fn record_divergence(&self, plugin: &str) {
        self.divergences.get_or_create(&PluginLabels { plugin: plugin.into() }).inc();
    }

    pub(crate) fn record<T>(&self, plugin: &str, hook: &str, started: Instant, outcome: &Result<Called<T>>) {
        self.calls.get_or_create(&CallLabels { plugin: plugin.into(), hook: hook.into() }).inc();
        let labels = PluginLabels { plugin: plugin.into() };
        self.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(called) => {
                self.fuel.get_or_create(&labels).inc_by(called.fuel);
            }
            Err(e) => {
                let failure = e.failure().map_or("other", CallFailure::as_str);
                self.errors.get_or_create(&ErrorLabels { plugin: plugin.into(), failure: failure.into() }).inc();
                let at_unix_seconds =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let last =
                    LastError { hook: hook.into(), failure: failure.into(), message: e.to_string(), at_unix_seconds };
                self.last_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(plugin.into(), last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::error::Error;

    #[test]
    fn metrics_are_exposed_with_plugin_labels() {
        let metrics = Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let ok: Result<Called<()>> = Ok(Called { value: (), fuel: 42 });
        metrics.record("service", "preserve", Instant::now(), &ok);
        let failed: Result<Called<()>> = Err(Error::Rejected {
            plugin: "service".into(),
            hook: "preserve",
            object: "Service n/a".into(),
            message: "no".into(),
        });
        metrics.record("service", "preserve", Instant::now(), &failed);
        metrics.record_reload_failure("service");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"downsync_plugin_calls_total{plugin="service",hook="preserve"} 2"#), "{text}");
        assert!(text.contains(r#"downsync_plugin_errors_total{plugin="service",failure="rejected"} 1"#), "{text}");
        assert!(text.contains(r#"downsync_plugin_fuel_total{plugin="service"} 42"#), "{text}");
        assert!(text.contains(r#"downsync_plugin_call_seconds_count{plugin="service"} 2"#), "{text}");
        assert!(text.contains(r#"downsync_plugin_reload_failures_total{plugin="service"} 1"#), "{text}");
        assert_eq!(metrics.errors("service", CallFailure::Rejected), 1);
    }
}
