//! The operations endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (the initial sync is done and every plugin file has loaded at least once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::plugin::Reloader;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address cannot be bound.
    #[error("metricsAddr {addr}: cannot listen: {source}; pick another address with --metrics-addr")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the endpoints report on. Shared with the controller, which updates it.
#[derive(Debug)]
pub struct Health {
    registry: Registry,
    initial_done: AtomicBool,
    synced: AtomicU64,
    total: AtomicU64,
    reloader: Option<Arc<Reloader>>,
}

impl Health {
    /// Health over a metrics registry and, if plugins are configured, their reloader.
    pub fn new(registry: Registry, reloader: Option<Arc<Reloader>>) -> Self {
        Self {
            registry,
            initial_done: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            total: AtomicU64::new(0),
            reloader,
        }
    }

    /// Records initial-sync progress.
    pub fn set_progress(&self, synced: u64, total: u64) {
        self.synced.store(synced, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Marks the initial sync as done.
    pub fn set_initial_done(&self) {
        self.initial_done.store(true, Ordering::Release);
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.initial_done.load(Ordering::Acquire) {
            let (synced, total) = (self.synced.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
            return Some(format!("initial sync in progress: {synced}/{total} objects"));
        }
        let reloader = self.reloader.as_ref()?;
        let never: Vec<String> = reloader
            .status()
            .into_iter()
            .filter(|s| s.digest.is_none())
            .map(|s| match s.last_error {
                Some(e) => format!("plugin {} has never loaded: {e}", s.file.display()),
                None => format!("plugin {} has not loaded yet", s.file.display()),
            })
            .collect();
        (!never.is_empty()).then(|| never.join("\n"))
    }

    /// The metrics in Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], h.encode_metrics())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    match h.not_ready_reason() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Binds `addr` and serves until `shutdown` completes. Returns the bound address (useful with
/// port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok((bound, task))
}
