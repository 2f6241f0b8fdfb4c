//! Start-up shared by `run` and `diff`: connect both clusters (refusing a loop onto one
//! cluster), resolve every configured kind on both sides, and load the plugins.

use std::os::unix::fs::DirBuilderExt as _;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use tracing::{info, warn};

use super::config::{ResourceConfig, RunConfig};
use super::http;
use crate::kube::clients::{self, Connected};
use crate::kube::errors::classify;
use crate::plugin::oci::{FollowHandle, Sources};
use crate::plugin::{PluginEngine, PluginRegistry, Reloader, WatchConfig, WatchHandle};
use crate::sync::error::ApiError;
use crate::sync::{Gvr, NamespaceMapping, Resource, ownership};

/// Why the program cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is bad.
    #[error(transparent)]
    Config(#[from] super::config::Error),
    /// A cluster cannot be reached or its kubeconfig loaded.
    #[error(transparent)]
    Connect(#[from] clients::Error),
    /// The metrics endpoint cannot be served.
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The HTTPS certificate of the endpoints cannot be had.
    #[error(transparent)]
    Tls(#[from] super::http_tls::Error),
    /// The plugins cannot be loaded.
    #[error("pluginsDir: {0}")]
    Plugins(Box<crate::plugin::Error>),
    /// Upstream and downstream are one cluster.
    #[error(
        "upstream and downstream are the same cluster ({reason}); with namespaceMapping identity, downsync \
         would write over the objects it reads. Check --upstream-kubeconfig/--downstream-kubeconfig (and KUBECONFIG), \
         or map the namespaces (--namespace-prefix, --hashed-namespaces)"
    )]
    SameCluster {
        /// How it was detected.
        reason: String,
    },
    /// The upstream URL serves many kcp workspaces at once, and this command or setting cannot
    /// keep them apart.
    #[error(
        "upstream {url} serves many kcp workspaces at once (its path ends in /clusters/*: the shard wildcard or an \
         APIExport virtual workspace); {why}"
    )]
    ManyWorkspaces {
        /// The upstream URL.
        url: String,
        /// What cannot work with many workspaces, and what to do.
        why: String,
    },
    /// A configured resource is not served, or not readable, on one side.
    #[error("resources[{index}] {resource}: {side} cluster: {message}")]
    Resource {
        /// Position in the config's `resources`.
        index: usize,
        /// `Kind (apiVersion)`.
        resource: String,
        /// `upstream` or `downstream`.
        side: &'static str,
        /// What went wrong and what to do.
        message: String,
    },
    /// A start-up task could not finish.
    #[error("start-up task failed: {0}")]
    Task(String),
}

impl From<crate::plugin::Error> for Error {
    fn from(e: crate::plugin::Error) -> Self {
        Self::Plugins(Box::new(e))
    }
}

/// Result of starting.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One configured kind, resolved on both sides.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration entry.
    pub config: ResourceConfig,
    /// The upstream resource.
    pub up_ar: ApiResource,
    /// The downstream resource.
    pub down_ar: ApiResource,
    /// The downstream resource, as the core names it.
    pub down_resource: Resource,
}

/// The user agent of this process: `downsync/VERSION (IDENTITY)`, with the HA identity (the
/// pod name in a Deployment), so that the API servers' audit logs tell the replicas apart.
pub fn user_agent(config: &RunConfig) -> String {
    format!("downsync/{} ({})", env!("CARGO_PKG_VERSION"), config.replica_name())
}

/// Connects to both clusters and checks they are two different ones.
pub async fn connect(config: &RunConfig) -> Result<(Connected, Connected)> {
    let timeout = super::config::CONNECT_TIMEOUT;
    let ua = user_agent(config);
    let (up, down) = tokio::try_join!(
        clients::connect("upstream", &config.upstream, timeout, &ua),
        clients::connect("downstream", &config.downstream, timeout, &ua)
    )?;
    info!(upstream = %up.url, upstream_version = %up.version, downstream = %down.url,
        downstream_version = %down.version, "connected");
    // Into other namespaces, one cluster is its own downstream safely: downsync never takes
    // an object it wrote (one carrying its stamp) as desired. Onto the same names it would
    // overwrite the objects it reads.
    if config.namespace_mapping == NamespaceMapping::Identity
        && let Some(reason) = same_cluster(&up, &down).await
    {
        return Err(Error::SameCluster { reason });
    }
    Ok((up, down))
}

/// With an upstream serving many kcp workspaces, `run` and `diff` keep them apart: namespaces
/// are hashed per (workspace, namespace), keys and writes name the workspace. Refused: a
/// command that does not (`replay`: `command` names it), a namespace prefix (it would put two
/// workspaces' namespaces of one name together), and cluster-scoped kinds (one name, many
/// workspaces, one downstream object).
pub fn check_many_workspaces(
    config: &RunConfig,
    up: &Connected,
    command: Option<&str>,
    resolved: &[Resolved],
) -> Result<bool> {
    if !crate::sync::workspaces::is_multi_workspace(&up.url) {
        return Ok(false);
    }
    let refuse = |why: String| Err(Error::ManyWorkspaces { url: up.url.clone(), why });
    if let Some(command) = command {
        return refuse(format!(
            "`downsync {command}` does not keep workspaces apart yet; point --upstream-kubeconfig at one workspace \
             (https://.../clusters/root:<workspace>)"
        ));
    }
    if matches!(config.namespace_mapping, crate::sync::NamespaceMapping::Prefix { .. }) {
        return refuse(
            "namespaces of many workspaces are always hashed per workspace and namespace; drop namespacePrefix".into(),
        );
    }
    if let Some(r) = resolved.iter().find(|r| !r.down_resource.namespaced) {
        return refuse(format!(
            "{} is cluster-scoped, and objects of one name in many workspaces would be one downstream object; sync \
             it from one workspace",
            r.config.describe()
        ));
    }
    Ok(true)
}

/// Whether two connections reach one cluster: the same URL, or (through two URLs) the same
/// `kube-system` namespace, whose UID is unique per cluster.
async fn same_cluster(up: &Connected, down: &Connected) -> Option<String> {
    if up.url.trim_end_matches('/') == down.url.trim_end_matches('/') {
        return Some(format!("both are {}", up.url));
    }
    let uid = |c: Client| async move {
        let api: Api<Namespace> = Api::all(c);
        api.get_opt("kube-system").await.ok().flatten().and_then(|ns| ns.metadata.uid)
    };
    // Without RBAC to read the namespace the check is skipped: the URLs differ.
    match tokio::join!(uid(up.client.clone()), uid(down.client.clone())) {
        (Some(a), Some(b)) if a == b => {
            Some(format!("{} and {} have the same kube-system namespace (uid {a})", up.url, down.url))
        }
        _ => None,
    }
}

/// The running plugin lifecycle: the folder watch, and the registry sources' follower.
pub struct PluginWatch {
    _watch: WatchHandle,
    _follow: Option<FollowHandle>,
}

/// Loads the plugins (compiling off the async workers) and starts watching the folder and the
/// registry sources.
pub async fn start_plugins(
    config: &RunConfig,
    rules: &Arc<PluginRegistry>,
) -> Result<(Option<Arc<Reloader>>, Option<PluginWatch>)> {
    let Some(reloader) = plugin_reloader(config, rules).await? else { return Ok((None, None)) };
    let handle = watch_plugins(Arc::clone(&reloader), config.registry_sources()?).await?;
    Ok((Some(reloader), Some(handle)))
}

/// The reloader of the plugins folder and the registry sources, if any is configured; nothing
/// is loaded yet. Without a plugins folder, the registry cache's folder stands in for it.
pub async fn plugin_reloader(config: &RunConfig, rules: &Arc<PluginRegistry>) -> Result<Option<Arc<Reloader>>> {
    let from_registry = config.plugins.values().any(|p| p.source.is_some());
    let dir = match (&config.plugins_dir, from_registry) {
        (Some(dir), _) => dir.clone(),
        (None, true) => config.registry_cache_dir(),
        (None, false) => return Ok(None),
    };
    let (engine_config, registry_config, rules) = (config.engine_config(), config.registry_config(), Arc::clone(rules));
    info!(
        fuel = engine_config.fuel,
        memory_mib = engine_config.memory_bytes >> 20,
        workers = config.workers,
        "each rule call gets this fuel and memory (memory: half of the container's limit, else the machine's, shared by the workers, between 64 MiB and 1 GiB)"
    );
    let reloader = tokio::task::spawn_blocking(move || -> Result<_> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Task(format!("cannot create the plugin cache {}: {e}", dir.display())))?;
        let engine = PluginEngine::new(engine_config)?;
        Ok(Reloader::new(engine, &dir, registry_config, rules))
    })
    .await
    .map_err(|e| Error::Task(format!("starting the plugin engine: {e}")))??;
    Ok(Some(reloader))
}

/// Pulls the registry sources (the cache standing in for a registry out of reach), loads every
/// plugin (a compile can take many seconds for an interpreted guest, so `run` fills its caches
/// meanwhile) and starts watching the folder and following the sources.
pub async fn watch_plugins(reloader: Arc<Reloader>, sources: Sources) -> Result<PluginWatch> {
    let r = Arc::clone(&reloader);
    let handle = tokio::task::spawn_blocking(move || -> Result<_> {
        let follow = if sources.list.is_empty() { None } else { Some(r.follow(sources)?) };
        // A short debounce: a swap is one rename (or one ConfigMap `..data` flip), so there is
        // little to coalesce, and operators expect to see it at once.
        let watch = r.watch(WatchConfig { debounce: Duration::from_millis(50), ..WatchConfig::default() })?;
        Ok(PluginWatch { _watch: watch, _follow: follow })
    })
    .await
    .map_err(|e| Error::Task(format!("loading plugins: {e}")))??;
    for s in reloader.status() {
        match (&s.digest, &s.last_error) {
            (Some(d), _) => info!(plugin = %s.name, file = %s.file.display(), digest = %d, "plugin loaded"),
            (None, Some(e)) => warn!(plugin = %s.name, file = %s.file.display(), error = %e, "plugin refused"),
            (None, None) => {}
        }
    }
    Ok(handle)
}

/// A kind on one side: its resource and whether it is namespaced, `None` when the side does not
/// serve it (yet: its CRD may come later).
async fn resolve_one(
    client: &Client,
    gvk: &GroupVersionKind,
) -> std::result::Result<Option<(ApiResource, bool)>, String> {
    match kube::discovery::pinned_kind(client, gvk).await {
        Ok((ar, caps)) => Ok(Some((ar, caps.scope == Scope::Namespaced))),
        Err(kube::Error::Discovery(_)) => Ok(None),
        Err(e) => match classify(e) {
            ApiError::NotFound => Ok(None),
            other => Err(format!("discovery failed: {other}")),
        },
    }
}

/// A configured kind at start-up (or when looked at again): resolved on both sides, or not
/// served on one of them yet.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Served on both sides, and listable by downsync.
    Served(Box<Resolved>),
    /// Not served on this side (`upstream` or `downstream`).
    NotServed(&'static str),
}

const NOT_SERVED: &str = "not served; install its CRD or fix apiVersion/kind";

/// Whether a kind not served now may be served later: only a group with a dot can be a CRD's
/// (or an aggregated API's); a kind missing from a built-in group (`v1`, `apps/v1`) is a typo.
pub fn may_come_later(r: &ResourceConfig) -> bool {
    r.group().contains('.')
}

/// The error for `resources[index]`, not served on `side`, for a command that cannot wait.
pub fn not_served(index: usize, r: &ResourceConfig, side: &'static str) -> Error {
    let message = if may_come_later(r) {
        NOT_SERVED.to_string()
    } else {
        format!("not served; fix apiVersion/kind (no CRD can add a kind to the built-in group {:?})", r.group())
    };
    Error::Resource { index, resource: r.describe(), side, message }
}

/// Resolves every configured kind on both sides and checks downsync may list it there (a bad
/// label selector or missing RBAC fails here, with the resource named, not later in a loop). A
/// kind not served on a side is an error here: for the commands that run once (`diff`,
/// `replay`); `run` takes up such kinds later ([`resolve_kind`]).
pub async fn resolve_all(config: &RunConfig, up: &Connected, down: &Connected) -> Result<Vec<Resolved>> {
    let mut out = Vec::new();
    for (index, r) in config.resources.iter().enumerate() {
        match resolve_kind(config, index, &up.client, &down.client).await? {
            Resolution::Served(resolved) => out.push(*resolved),
            Resolution::NotServed(side) => return Err(not_served(index, r, side)),
        }
    }
    Ok(out)
}

/// Resolves `resources[index]` on both sides: served or not, and, when served, listable by
/// downsync (a bad label selector or missing RBAC is an error naming the resource).
pub async fn resolve_kind(config: &RunConfig, index: usize, up: &Client, down: &Client) -> Result<Resolution> {
    let Some(r) = config.resources.get(index) else {
        return Err(Error::Task(format!("resources[{index}] does not exist")));
    };
    let err = |side: &'static str, message: String| Error::Resource { index, resource: r.describe(), side, message };
    let (group, version) = r.api_version.rsplit_once('/').unwrap_or(("", r.api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, &r.kind);
    let Some((up_ar, up_namespaced)) = resolve_one(up, &gvk).await.map_err(|m| err("upstream", m))? else {
        return Ok(Resolution::NotServed("upstream"));
    };
    let Some((down_ar, down_namespaced)) = resolve_one(down, &gvk).await.map_err(|m| err("downstream", m))? else {
        return Ok(Resolution::NotServed("downstream"));
    };
    if up_namespaced != down_namespaced {
        return Err(err("downstream", "namespaced on one side and cluster-scoped on the other".into()));
    }
    let mut lp = ListParams::default().limit(1);
    if let Some(sel) = &r.label_selector {
        lp = lp.labels(sel);
    }
    let up_api: Api<DynamicObject> = Api::all_with(up.clone(), &up_ar);
    up_api
        .list_metadata(&lp)
        .await
        .map_err(|e| err("upstream", format!("cannot list (labelSelector {:?}): {}", r.label_selector, classify(e))))?;
    let owned = ListParams::default().limit(1).labels(&ownership::owned_selector(&config.sync.ownership));
    let down_api: Api<DynamicObject> = Api::all_with(down.clone(), &down_ar);
    down_api.list_metadata(&owned).await.map_err(|e| err("downstream", format!("cannot list: {}", classify(e))))?;
    let down_resource = Resource {
        gvr: Gvr { group: down_ar.group.clone(), version: down_ar.version.clone(), resource: down_ar.plural.clone() },
        kind: down_ar.kind.clone(),
        namespaced: down_namespaced,
    };
    Ok(Resolution::Served(Box::new(Resolved { config: r.clone(), up_ar, down_ar, down_resource })))
}
