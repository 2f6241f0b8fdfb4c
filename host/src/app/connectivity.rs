//! Whether each side's API server answers, as the watches see it: a lost connection is logged
//! once, with the server's URL, and once again when it returns; the state is exported as the
//! `downsync_connected{side}` gauge and in `/readyz?verbose`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: &'static str,
}

/// One cluster's connection state.
#[derive(Debug)]
struct Side {
    name: &'static str,
    url: String,
    ok: AtomicBool,
}

impl Side {
    /// Records an outcome; true when it changed the state (and was logged).
    fn set(&self, ok: bool, gauge: &Family<SideLabels, Gauge<i64, AtomicI64>>) -> bool {
        let was = self.ok.swap(ok, Ordering::AcqRel);
        if was == ok {
            return false;
        }
        gauge.get_or_create(&SideLabels { side: self.name }).set(i64::from(ok));
        if ok {
            info!(side = self.name, url = %self.url, "connection to the API server is back");
        } else {
            warn!(side = self.name, url = %self.url, "lost the connection to the API server; retrying");
        }
        true
    }
}

/// Connection state of both sides.
#[derive(Debug)]
pub struct Connectivity {
    upstream: Side,
    downstream: Side,
    gauge: Family<SideLabels, Gauge<i64, AtomicI64>>,
}

impl Connectivity {
    /// Both sides connected (start-up checked them), at these URLs.
    pub fn new(upstream_url: &str, downstream_url: &str) -> Self {
        let gauge = Family::<SideLabels, Gauge<i64, AtomicI64>>::default();
        for side in ["upstream", "downstream"] {
            gauge.get_or_create(&SideLabels { side }).set(1);
        }
        let side = |name, url: &str| Side { name, url: url.to_string(), ok: AtomicBool::new(true) };
        Self { upstream: side("upstream", upstream_url), downstream: side("downstream", downstream_url), gauge }
    }

    /// Registers `downsync_connected{side}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "downsync_connected",
            "Whether the API server of each side answers the watches (1) or not (0)",
            self.gauge.clone(),
        );
    }

    /// Records an upstream outcome; true when the state changed.
    pub fn up(&self, ok: bool) -> bool {
        self.upstream.set(ok, &self.gauge)
    }

    /// Records a downstream outcome; true when the state changed.
    pub fn down(&self, ok: bool) -> bool {
        self.downstream.set(ok, &self.gauge)
    }

    /// One line per side, for `/readyz?verbose`.
    pub fn describe(&self) -> String {
        [&self.upstream, &self.downstream]
            .iter()
            .map(|s| {
                let state = if s.ok.load(Ordering::Acquire) { "connected" } else { "disconnected" };
                format!("{} {}: {state}", s.name, s.url)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_is_reported_once_until_it_changes_back() {
        let c = Connectivity::new("https://up", "https://down");
        assert!(!c.up(true), "already connected");
        assert!(c.up(false), "lost: reported");
        assert!(!c.up(false), "still lost: not again");
        assert!(c.describe().contains("upstream https://up: disconnected"), "{}", c.describe());
        assert!(c.up(true), "back: reported");
        assert!(c.describe().contains("upstream https://up: connected"));
        assert!(c.describe().contains("downstream https://down: connected"));
    }
}
