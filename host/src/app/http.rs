//! The operations endpoints. The probes `/healthz` and `/readyz` answer plainly on a port of
//! their own (`metricsAddr`'s port + 1); the rest over HTTPS on `metricsAddr`, to callers whose
//! bearer token the downstream cluster grants `get` on the path (see [`super::http_auth`]).
//! `/metrics` (Prometheus text), `/healthz` (the process runs and
//! its sync workers are all running) and `/readyz` (the initial sync is done and every plugin
//! file has loaded at least once; `/readyz?verbose` adds each side's connection state, the
//! shards this replica holds, the configured kinds a side does not serve yet, and the plugins
//! that fail at run time), `/shards` (which replica
//! holds which shard, as JSON), `/plugins` (per plugin: what is loaded, calls, failures by
//! class, the last error, shadow and rollback state; JSON) and `/explain` (which rule kept or
//! changed each field of one object; JSON, see [`super::explain`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use super::connectivity::Connectivity;
use super::ha::SharedView;
pub use super::http_auth::Authorizer;
use crate::plugin::Reloader;

/// A liveness check: `None` when live, else why not.
pub type LiveCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Answers `/explain` for one object, by upstream kind, namespace and name.
pub trait Explainer: Send + Sync {
    /// The explanation as JSON, or why there is none (an unknown kind or object).
    fn explain<'a>(
        &'a self,
        kind: &'a str,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<serde_json::Value, String>>;
}

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
    /// `metricsAddr` leaves no next port for the probes.
    #[error("metricsAddr {addr}: the probes are served on the next port, and there is none; pick a lower port")]
    NoProbePort {
        /// The address.
        addr: SocketAddr,
    },
    /// The HTTPS port was to be served without a certificate or an authorizer (a bug).
    #[error("metricsAddr {addr}: no certificate or authorizer to serve HTTPS with")]
    NoSecurity {
        /// The address.
        addr: SocketAddr,
    },
}

/// What the endpoints report on. Shared with the controller, which updates it.
pub struct Health {
    registry: Registry,
    initial_done: AtomicBool,
    synced: AtomicU64,
    total: AtomicU64,
    reloader: Option<Arc<Reloader>>,
    connectivity: Arc<Connectivity>,
    live: LiveCheck,
    ha: SharedView,
    explainer: OnceLock<Arc<dyn Explainer>>,
    waiting_kinds: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("initial_done", &self.initial_done).finish_non_exhaustive()
    }
}

impl Health {
    /// Health over a metrics registry, the plugins' reloader (if plugins are configured), the
    /// clusters' connectivity, and a liveness check.
    pub fn new(
        registry: Registry,
        reloader: Option<Arc<Reloader>>,
        connectivity: Arc<Connectivity>,
        live: LiveCheck,
    ) -> Self {
        Self {
            registry,
            initial_done: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            total: AtomicU64::new(0),
            reloader,
            connectivity,
            live,
            ha: SharedView::default(),
            explainer: OnceLock::new(),
            waiting_kinds: std::sync::Mutex::default(),
        }
    }

    /// Serves `view` on `/shards` and in `/readyz?verbose`.
    #[must_use]
    pub fn with_ha_view(mut self, view: SharedView) -> Self {
        self.ha = view;
        self
    }

    /// Which replica holds which shard, as this replica last saw the Leases (JSON).
    pub fn shards_json(&self) -> String {
        super::ha::view_json(&self.ha)
    }

    fn describe_ha(&self) -> String {
        let v = self.ha.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !v.enabled {
            return "ha: off; this process writes every object".into();
        }
        let mine: Vec<String> = v.leases.iter().filter(|l| l.mine).map(|l| l.shard.to_string()).collect();
        format!(
            "ha: {} holds shards [{}] of {} (a standby holding none is ready: its caches are warm); live replicas: {}",
            v.identity,
            mine.join(", "),
            v.shards,
            v.live_replicas.join(", ")
        )
    }

    /// The configured kinds waiting for a side to serve them, one line each (`/readyz?verbose`).
    pub fn set_waiting_kinds(&self, lines: Vec<String>) {
        *self.waiting_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = lines;
    }

    fn describe_kinds(&self) -> String {
        let lines = self.waiting_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if lines.is_empty() { "kinds: every configured kind is synced".into() } else { lines.join("\n") }
    }

    /// Serves `/explain` through `explainer` (set once the controller exists).
    pub fn set_explainer(&self, explainer: Arc<dyn Explainer>) {
        let _ = self.explainer.set(explainer);
    }

    /// `None` when live, else why not.
    pub fn not_live_reason(&self) -> Option<String> {
        (self.live)()
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
            // The file's name only, not its path or the error (which may name paths and
            // URLs): the probes' port answers anyone; /plugins and the log say why.
            .map(|s| {
                let file = s.file.file_name().map_or_else(|| s.name.clone(), |f| f.to_string_lossy().into_owned());
                match s.last_error {
                    Some(_) => format!("plugin {} ({file}) has never loaded; /plugins and the log say why", s.name),
                    None => format!("plugin {} ({file}) has not loaded yet", s.name),
                }
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

async fn plugins(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let body = h.reloader.as_ref().map_or_else(|| serde_json::json!({"plugins": []}), |r| r.status_json());
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// The `key=value` pairs of a query string. Names and kinds never need escapes, so a `%` is
/// refused rather than decoded.
fn query_pairs(q: Option<&str>) -> Result<Vec<(&str, &str)>, String> {
    let q = q.unwrap_or_default();
    if q.contains('%') {
        return Err("escaped characters are not accepted: kinds, namespaces and names need none".into());
    }
    Ok(q.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect())
}

async fn explain(
    State(h): State<Arc<Health>>,
    RawQuery(q): RawQuery,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let error =
        |code: StatusCode, message: String| (code, json.clone(), serde_json::json!({"error": message}).to_string());
    let pairs = match query_pairs(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v).filter(|v| !v.is_empty());
    let (Some(kind), Some(name)) = (get("kind"), get("name")) else {
        return error(StatusCode::BAD_REQUEST, "give kind, name and (for namespaced kinds) namespace".into());
    };
    let Some(explainer) = h.explainer.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the sync loop has not started yet".into());
    };
    match explainer.explain(kind, get("namespace"), name).await {
        Ok(answer) => (StatusCode::OK, json, answer.to_string()),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

async fn shards(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], h.shards_json())
}

async fn healthz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    match h.not_live_reason() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(h): State<Arc<Health>>, RawQuery(q): RawQuery) -> (StatusCode, String) {
    let (code, mut text) = match h.not_ready_reason() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    };
    // A brand-new plugin that fails on (nearly) every call has nothing to roll back to: said
    // on every /readyz, while the pod stays ready (the README says why).
    for line in h.reloader.as_ref().map(|r| r.failing_without_fallback()).unwrap_or_default() {
        text.push_str("warning: ");
        text.push_str(&line);
        text.push('\n');
    }
    let verbose = q.as_deref().is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    if verbose {
        text.push_str(&h.connectivity.describe());
        text.push('\n');
        text.push_str(&h.describe_ha());
        text.push('\n');
        // A kind that one side does not serve yet does not make the pod unready either: its
        // CRD may come later, and every other kind syncs meanwhile.
        text.push_str(&h.describe_kinds());
        text.push('\n');
        // A plugin that fails at run time does not make the pod unready: its objects are held
        // back (fail-closed) and reported, and every other kind keeps syncing; restarting or
        // draining the pod would not fix a plugin. It is listed here and on /plugins.
        for line in h.reloader.as_ref().map(|r| r.runtime_failures()).unwrap_or_default() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    (code, text)
}

/// Where the endpoints listen.
#[derive(Debug)]
pub enum Listeners {
    /// Development (`--insecure-endpoints`): every endpoint, probes too, plainly on one
    /// loopback port.
    Plain(tokio::net::TcpListener),
    /// The default: `/metrics`, `/plugins`, `/explain` and `/shards` over HTTPS behind
    /// TokenReview and SubjectAccessReview; `/healthz` and `/readyz` plainly on the next port.
    Secure {
        /// The HTTPS port (`metricsAddr`).
        ops: tokio::net::TcpListener,
        /// The probes' port.
        probes: tokio::net::TcpListener,
    },
}

/// The probes' address for `metricsAddr`: the same host, the next port (port 0 stays 0).
pub fn probe_addr(metrics: SocketAddr) -> Result<SocketAddr, Error> {
    let port = match metrics.port() {
        0 => 0,
        p => p.checked_add(1).ok_or(Error::NoProbePort { addr: metrics })?,
    };
    Ok(SocketAddr::new(metrics.ip(), port))
}

/// Binds the endpoints' ports for [`serve`]. Done before anything else at start-up, so that an
/// address in use stops the program at once, naming it. `insecure` serves plainly, on
/// 127.0.0.1 whatever host `addr` names.
pub async fn bind(addr: SocketAddr, insecure: bool) -> Result<Listeners, Error> {
    if insecure {
        let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        return Ok(Listeners::Plain(bind_one(local)?));
    }
    Ok(Listeners::Secure { ops: bind_one(addr)?, probes: bind_one(probe_addr(addr)?)? })
}

fn bind_one(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    // std's bind, unlike tokio's, does not set SO_REUSEADDR: a port another process serves
    // on is refused rather than silently shared or stolen.
    let std_listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    std_listener.set_nonblocking(true).map_err(|source| Error::Bind { addr, source })?;
    tokio::net::TcpListener::from_std(std_listener).map_err(|source| Error::Bind { addr, source })
}

/// How the HTTPS port checks callers and proves itself.
#[derive(Debug, Clone)]
pub struct Security {
    /// Reviews bearer tokens and grants through the downstream cluster.
    pub authorizer: Arc<Authorizer>,
    /// The serving certificate.
    pub tls: Arc<rustls::ServerConfig>,
}

fn probes(health: Arc<Health>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health)
}

fn operations(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/shards", get(shards))
        .route("/plugins", get(plugins))
        .route("/explain", get(explain))
        .with_state(health)
}

/// What [`serve`] started: the bound addresses and the server tasks.
#[derive(Debug)]
pub struct Served {
    /// Where the operations endpoints answer (plainly with `--insecure-endpoints`, else HTTPS).
    pub ops: SocketAddr,
    /// Where the probes answer, when on a port of their own.
    pub probes: Option<SocketAddr>,
    /// The server tasks; they end once `stop` turns true.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Serves on `listeners` until `stop` turns true. `security` is required for
/// [`Listeners::Secure`].
pub fn serve(
    listeners: Listeners,
    health: Arc<Health>,
    security: Option<Security>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Served, Error> {
    let addr_of = |l: &tokio::net::TcpListener| {
        l.local_addr().map_err(|source| Error::Bind { addr: ([0, 0, 0, 0], 0).into(), source })
    };
    let plain = |listener: tokio::net::TcpListener, app: Router, mut stop: tokio::sync::watch::Receiver<bool>| {
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "the operations server stopped");
            }
        })
    };
    match (listeners, security) {
        (Listeners::Plain(listener), _) => {
            let ops = addr_of(&listener)?;
            let app = operations(Arc::clone(&health)).merge(probes(health));
            Ok(Served { ops, probes: None, tasks: vec![plain(listener, app, stop)] })
        }
        (Listeners::Secure { ops, probes: probe_listener }, Some(security)) => {
            let (ops_addr, probe_addr) = (addr_of(&ops)?, addr_of(&probe_listener)?);
            let app = operations(Arc::clone(&health))
                .layer(axum::middleware::from_fn_with_state(security.authorizer, super::http_auth::require_grant));
            let tasks = vec![
                plain(probe_listener, probes(health), stop.clone()),
                tokio::spawn(super::http_tls::serve(ops, security.tls, app, stop)),
            ];
            Ok(Served { ops: ops_addr, probes: Some(probe_addr), tasks })
        }
        (Listeners::Secure { ops, .. }, None) => Err(Error::NoSecurity { addr: addr_of(&ops)? }),
    }
}
