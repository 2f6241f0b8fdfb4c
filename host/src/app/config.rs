//! The program's configuration: a typed struct with defaults, read once from YAML and flags,
//! validated with messages that name the setting and what to do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ha::HaConfig;
use crate::kube::clients::ClusterSettings;
use crate::plugin::oci::{RegistrySettings, Sources};
use crate::plugin::{EngineConfig, PluginSettings, RegistryConfig};
use crate::sync::{DownstreamConfig, NamespaceMapping};

/// A bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the config, or has unknown settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file names a setting that is gone.
    #[error("config file {path}: `{setting}` is gone: {instead}")]
    Gone {
        /// The file.
        path: PathBuf,
        /// The setting, as written (`resources[2].drift.keep`).
        setting: String,
        /// What replaced it.
        instead: &'static str,
    },
    /// A setting has a bad value.
    #[error("setting {setting}: {message}")]
    Invalid {
        /// The setting, as in the config file (`resources[2].kind`).
        setting: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Result of reading the config.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One kind to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceConfig {
    /// `group/version`, or `version` for the core group (`v1`, `apps/v1`).
    pub api_version: String,
    /// The kind, such as `Deployment`.
    pub kind: String,
    /// Only upstream objects matching this label selector.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// What happens when a field downsync enforces is changed downstream by another writer:
    /// revert it (the default), keep it, or report it, per field manager.
    #[serde(default)]
    pub drift: crate::sync::DriftPolicy,
}

impl ResourceConfig {
    /// Parses `apiVersion/Kind` as given to `--resource` (`v1/ConfigMap`, `apps/v1/Deployment`).
    pub fn parse_flag(flag: &str) -> Result<Self> {
        let invalid = |message: String| Error::Invalid { setting: format!("--resource {flag}"), message };
        let (api_version, kind) = flag
            .rsplit_once('/')
            .ok_or_else(|| invalid("expected API_VERSION/KIND, such as apps/v1/Deployment".into()))?;
        if api_version.is_empty() || kind.is_empty() {
            return Err(invalid("expected API_VERSION/KIND, such as apps/v1/Deployment".into()));
        }
        Ok(Self {
            api_version: api_version.into(),
            kind: kind.into(),
            label_selector: None,
            drift: crate::sync::DriftPolicy::default(),
        })
    }

    /// `Kind.group` or `Kind` for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.kind, self.api_version)
    }

    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
}

/// The whole configuration of `downsync run` and `downsync diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RunConfig {
    /// The upstream cluster (source of desired objects).
    pub upstream: ClusterSettings,
    /// The downstream cluster (where downsync writes).
    pub downstream: ClusterSettings,
    /// Folder of `<name>.wasm` rule components, hot-reloaded. None: no plugins.
    pub plugins_dir: Option<PathBuf>,
    /// The kinds to sync.
    pub resources: Vec<ResourceConfig>,
    /// Upstream namespaces to sync, and with a leading `!` those never synced (`[a, b]`: only
    /// these; `["!c"]`: all but c). Without a name to sync: all but kube-system, kube-public and
    /// kube-node-lease, which are synced only when named here.
    pub namespaces: Vec<String>,
    /// How namespaces are named downstream.
    pub namespace_mapping: NamespaceMapping,
    /// Concurrent syncs.
    pub workers: usize,
    /// Every object is looked at again this often, even without events: a backstop for a lost
    /// event, since both sides are watched. Not a setting: [`RESYNC_SECONDS`].
    #[serde(skip)]
    pub resync_seconds: u64,
    /// Owned downstream objects found without an upstream object at startup are deleted only
    /// after this long, so a slow or misconfigured upstream does not wipe the downstream. Not a
    /// setting: [`ORPHAN_GRACE_SECONDS`]; tests shorten it with the hidden
    /// `--orphan-grace-seconds`.
    #[serde(skip)]
    pub orphan_grace_seconds: u64,
    /// Where `/metrics`, `/plugins`, `/explain` and `/shards` are served over HTTPS, to callers
    /// whose bearer token the downstream cluster grants `get` on the path; `/healthz` and
    /// `/readyz` answer plainly on the next port (8081 by default). None (`off` in the file, as
    /// for `--metrics-addr`): nothing is served.
    #[serde(deserialize_with = "metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
    /// A folder holding `tls.crt` and `tls.key` (a mounted `kubernetes.io/tls` Secret, as
    /// cert-manager makes) for the HTTPS of `metricsAddr`, so scrapers can verify it; when it
    /// holds no `tls.crt`, or is None, a self-signed certificate is made at each start. Not a
    /// setting: the conventional [`METRICS_CERT_DIR`], where a pod mounts the Secret beside its
    /// config.
    #[serde(skip)]
    pub metrics_cert_dir: Option<PathBuf>,
    /// What downsync writes to the upstream objects besides reading them (none: upstream is only
    /// read): `finalizer`, its finalizer, so that an upstream delete waits for the downstream
    /// copy's; `status`, the downstream status copied to the upstream status subresource. The
    /// upstream RBAC grants exactly these (`examples/deploy/rbac-upstream.yaml`, the chart).
    pub upstream_writes: Vec<UpstreamWrite>,
    /// How downstream objects are written, and who owns them.
    pub sync: DownstreamConfig,
    /// Per-plugin settings (failure policy, pinned digest, rollout), by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// How plugins with a registry `source` are pulled: credentials, CA, insecure registries,
    /// how often a tag is checked.
    pub registry: RegistrySettings,
    /// Plugin sandbox limits per call (fuel, memory).
    pub engine: EngineConfig,
    /// Feature gates by name, `Name: true|false` (`downsync run --help` lists them); unset gates
    /// take their default.
    pub feature_gates: BTreeMap<String, bool>,
    /// High availability and sharding through Leases in the downstream cluster: on when given
    /// (`ha: {}` for one shard), off when left out.
    pub ha: Option<HaConfig>,
}

/// One thing downsync may write upstream (`upstreamWrites`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamWrite {
    /// Its finalizer on the upstream objects: their deletion waits for the downstream copy's.
    Finalizer,
    /// The downstream status, copied to the upstream object's status subresource.
    Status,
}

/// Where the certificate of the HTTPS endpoints is looked for (`tls.crt` and `tls.key`, as a
/// mounted `kubernetes.io/tls` Secret holds them), beside the pod's config in /etc/downsync.
pub const METRICS_CERT_DIR: &str = "/etc/downsync/tls";

/// How often every object is looked at again without an event (10 minutes, as
/// controller-runtime's default sync period is hours): watches on both sides carry the changes,
/// so this only catches an event a watch lost.
pub const RESYNC_SECONDS: u64 = 600;

/// How long owned downstream objects found without an upstream object at startup wait before
/// they are deleted: longer than a restart takes, short enough that a real orphan goes soon.
pub const ORPHAN_GRACE_SECONDS: u64 = 30;

/// Namespaces every cluster runs its own machinery in. Never synced unless a `namespaces:`
/// list names them: their objects belong to the cluster that made them.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The most sync workers a process may run; more only adds contention on the two API servers.
pub const MAX_WORKERS: usize = 256;

/// The longest of the tests' `--orphan-grace-seconds`: a year. Longer is a
/// typo, and far longer (2^64-1) overflows the clock it is added to.
pub const MAX_PERIOD_SECONDS: u64 = 365 * 24 * 3600;

/// `metricsAddr`: `HOST:PORT`, or `off` (or empty, or null) to serve nothing.
fn metrics_addr<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<SocketAddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text.as_deref().map(str::trim) {
        None | Some("off" | "") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{a:?} is not HOST:PORT such as 0.0.0.0:8080, or `off`"))),
    }
}

/// The parser's message in the user's terms: the Rust type it expected (`usize`, `u64`,
/// `struct HaConfig`) said as what to write.
fn user_terms(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("expected ") {
        let (before, after) = rest.split_at(i + "expected ".len());
        out.push_str(before);
        let end = after.find([',', ' ', '\n']).unwrap_or(after.len());
        let (word, tail) = after.split_at(end);
        let said = match word {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => Some("a whole number, 0 or more"),
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => Some("a whole number"),
            "f32" | "f64" => Some("a number"),
            _ => None,
        };
        match (said, word) {
            (Some(s), _) => {
                out.push_str(s);
                rest = tail;
            }
            (None, "struct") => {
                // `struct HaConfig`: the name is the program's, not a setting.
                let name_end = tail.trim_start().find([',', ' ', '\n']).map_or(tail.len(), |e| e + 1);
                out.push_str("a mapping of settings (key: value)");
                rest = &tail[name_end.min(tail.len())..];
            }
            (None, "a") if tail.starts_with(" boolean") => {
                out.push_str("true or false");
                rest = &tail[" boolean".len()..];
            }
            _ => {
                out.push_str(word);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The least time between two bulk re-syncs starting (after a rule change, the periodic
/// resync): about 140 a second, so that a re-sync of everything loads the API servers and the
/// cores they share at a bounded rate, and the changes that arrive meanwhile keep their latency
/// (docs/benchmarks.md, the hot-reload section: at 200 a second their p99 was 2.0-2.5x the
/// steady one). 10,000 objects take 70 s.
pub const RESYNC_INTERVAL: Duration = Duration::from_millis(7);

/// How long to wait for a cluster to answer at startup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            upstream: ClusterSettings::default(),
            downstream: ClusterSettings::default(),
            plugins_dir: None,
            resources: Vec::new(),
            namespaces: Vec::new(),
            namespace_mapping: NamespaceMapping::default(),
            workers: 8,
            resync_seconds: RESYNC_SECONDS,
            orphan_grace_seconds: ORPHAN_GRACE_SECONDS,
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            metrics_cert_dir: Some(PathBuf::from(METRICS_CERT_DIR)),
            upstream_writes: Vec::new(),
            sync: DownstreamConfig::default(),
            plugins: BTreeMap::new(),
            registry: RegistrySettings::default(),
            engine: EngineConfig::default(),
            feature_gates: BTreeMap::new(),
            ha: None,
        }
    }
}

/// Objects each cluster creates and owns itself; copying them would fight its controllers
/// (kcp's syncer skips the same ones).
fn is_per_cluster(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> bool {
    api_version == "v1"
        && match kind {
            "ConfigMap" => name == "kube-root-ca.crt",
            "ServiceAccount" => name == "default",
            "Service" => ns == Some("default") && name == "kubernetes",
            "Namespace" => matches!(name, "default" | "kube-system" | "kube-public" | "kube-node-lease"),
            _ => false,
        }
}

/// A namespace's name: a DNS label (1-63 lowercase letters, digits and '-', alphanumeric at
/// both ends).
fn namespace_name(name: &str) -> bool {
    label_safe(name) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn label_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && value.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The parser's message, led by the top-level setting at fault when the parser lost track of it
/// (inside a tagged enum such as `namespaceMapping` it knows no path).
fn with_setting(text: &str, e: serde_yaml_ng::Error) -> String {
    let message = user_terms(&e.to_string());
    let Ok(serde_yaml_ng::Value::Mapping(top)) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return message;
    };
    for (key, value) in top {
        let Some(name) = key.as_str() else { continue };
        let alone = serde_yaml_ng::Mapping::from_iter([(key.clone(), value)]);
        if serde_yaml_ng::from_value::<RunConfig>(serde_yaml_ng::Value::Mapping(alone)).is_err() {
            return if message.starts_with(name) { message } else { format!("{name}: {message}") };
        }
    }
    message
}

impl RunConfig {
    /// Reads a YAML config file. Unknown settings are errors, so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        Self::from_yaml(&text, path)
    }

    /// Parses YAML text; `path` is only for messages. A ConfigMap manifest holding the config
    /// under `data."config.yaml"` (as `examples/deploy/config.yaml` does for the pod) is read
    /// too: the file that deploys downsync also runs it locally.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self> {
        if let Ok(manifest) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            && manifest.get("kind").and_then(serde_yaml_ng::Value::as_str) == Some("ConfigMap")
        {
            let Some(inner) = manifest.get("data").and_then(|d| d.get("config.yaml")).and_then(|v| v.as_str()) else {
                return Err(Error::Parse {
                    path: path.into(),
                    message:
                        "a ConfigMap without data.\"config.yaml\": put the config there, or give the config itself"
                            .into(),
                });
            };
            return Self::parse(inner, path, "data.\"config.yaml\": ");
        }
        Self::parse(text, path, "")
    }

    /// Parses the config itself; `within` leads the parser's messages (where in the file it is).
    /// A removed setting is refused with what replaced it.
    fn parse(text: &str, path: &Path, within: &str) -> Result<Self> {
        if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            && let Some((setting, instead)) = super::gone::find(&value)
        {
            return Err(Error::Gone { path: path.into(), setting, instead });
        }
        serde_yaml_ng::from_str(text)
            .map_err(|e| Error::Parse { path: path.into(), message: format!("{within}{}", with_setting(text, e)) })
    }

    /// Whether downsync puts its finalizer on the upstream objects.
    pub fn upstream_finalizer(&self) -> bool {
        self.upstream_writes.contains(&UpstreamWrite::Finalizer)
    }

    /// Whether downsync copies the downstream status to the upstream objects.
    pub fn status_upsync(&self) -> bool {
        self.upstream_writes.contains(&UpstreamWrite::Status)
    }

    /// The HA settings, when HA is on.
    pub fn ha(&self) -> Option<&HaConfig> {
        self.ha.as_ref()
    }

    /// This replica's name, in its user agent and (with HA) in the Leases: `POD_NAME`, else the
    /// host name.
    pub fn replica_name(&self) -> String {
        self.ha.clone().unwrap_or_default().resolved_identity()
    }

    /// The plugin registry's settings.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig { plugins: self.plugins.clone() }
    }

    /// Whether feature gate `name` is on.
    pub fn feature(&self, name: &str) -> bool {
        super::features::enabled(&self.feature_gates, name)
    }

    /// Whether only the fields upstream clients asked for are enforced (the `ClientIntent`
    /// feature gate); off, every field of the upstream object is.
    pub fn client_intent(&self) -> bool {
        self.feature(super::features::CLIENT_INTENT)
    }

    /// The most workers one kind may hold at once, so that a kind whose rule is slow (or burns
    /// its whole deadline on every call) cannot take them all and stall the other kinds:
    /// `workers` less a quarter of them (at least 1 kept free), or all of them for one kind.
    pub fn workers_per_kind(&self) -> usize {
        if self.resources.len() <= 1 || self.workers <= 1 {
            self.workers
        } else {
            self.workers - (self.workers / 4).max(1)
        }
    }

    /// The most workers bulk re-syncs may hold at once: an eighth of `workers` (at least 1), so
    /// that changes arriving during a re-sync of everything meet an unloaded process.
    pub fn resync_workers(&self) -> usize {
        (self.workers / 8).max(1)
    }

    /// The plugin engine's settings: the file's fuel, a memory cap per call that lets every
    /// worker's call use it at once within half the memory downsync may use, and instance slots
    /// for every worker and a shadow version beside each.
    pub fn engine_config(&self) -> EngineConfig {
        use super::features::{INPUT_PROJECTION, TIERED_COMPILATION};
        let slots = u32::try_from(self.workers.saturating_mul(2)).unwrap_or(u32::MAX);
        EngineConfig {
            memory_bytes: crate::plugin::memory_per_call(self.workers),
            pool_instances: self.engine.pool_instances.max(slots),
            tiered_compilation: self.engine.tiered_compilation && self.feature(TIERED_COMPILATION),
            project_inputs: self.engine.project_inputs && self.feature(INPUT_PROJECTION),
            ..self.engine.clone()
        }
    }

    /// Objects whose last rule decisions are kept for `downsync explain`.
    pub fn explain_objects(&self) -> usize {
        crate::plugin::DEFAULT_EXPLAIN_OBJECTS
    }

    /// The resync period.
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds)
    }

    /// The orphan grace period.
    pub fn orphan_grace(&self) -> Duration {
        Duration::from_secs(self.orphan_grace_seconds)
    }

    /// Whether an upstream object is synced for resource `r`: its namespace is selected and it
    /// is not one of the objects every cluster makes for itself.
    pub fn selects(&self, r: &ResourceConfig, ns: Option<&str>, name: &str) -> bool {
        !is_per_cluster(&r.api_version, &r.kind, ns, name) && self.selects_namespace(ns)
    }

    /// Whether upstream namespace `ns` is synced (cluster-scoped objects: always): named in
    /// `namespaces`, or, when it names none to sync, any but the [`SYSTEM_NAMESPACES`]; and not
    /// named there with a leading `!`.
    pub fn selects_namespace(&self, ns: Option<&str>) -> bool {
        let Some(ns) = ns else { return true };
        let (mut names_some, mut named) = (false, false);
        for n in &self.namespaces {
            match n.strip_prefix('!') {
                Some(left_out) if left_out == ns => return false,
                Some(_) => {}
                None => (names_some, named) = (true, named || n == ns),
            }
        }
        named || (!names_some && !SYSTEM_NAMESPACES.contains(&ns))
    }

    /// Checks `resources`: at least one, each a kind and GROUP/VERSION, listed once.
    fn validate_resources(&self) -> Result<()> {
        let invalid = |setting: &str, message: String| Err(Error::Invalid { setting: setting.into(), message });
        if self.resources.is_empty() {
            return invalid(
                "resources",
                "no resources to sync; give --resource API_VERSION/KIND (such as v1/ConfigMap) or list them under \
                 `resources:` in the config file"
                    .into(),
            );
        }
        for (i, r) in self.resources.iter().enumerate() {
            if r.kind.is_empty() || !r.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return invalid(&format!("resources[{i}].kind"), format!("{:?} is not a kind name", r.kind));
            }
            let parts: Vec<&str> = r.api_version.split('/').collect();
            if r.api_version.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                return invalid(
                    &format!("resources[{i}].apiVersion"),
                    format!("{:?} is not GROUP/VERSION or VERSION (such as apps/v1 or v1)", r.api_version),
                );
            }
            if let Err(message) = r.drift.check() {
                return invalid(&format!("resources[{i}].drift.managers"), message);
            }
            let dup = self.resources[..i].iter().any(|o| o.api_version == r.api_version && o.kind == r.kind);
            if dup {
                return invalid(&format!("resources[{i}]"), format!("{} is listed twice", r.describe()));
            }
        }
        Ok(())
    }

    /// Checks the settings that can be checked without a cluster.
    pub fn validate(&self) -> Result<()> {
        self.validate_resources()?;
        let invalid = |setting: &str, message: String| Err(Error::Invalid { setting: setting.into(), message });
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return invalid("workers", format!("{} is out of range: give 1 to {MAX_WORKERS}", self.workers));
        }
        if let Some(ha) = &self.ha {
            ha.validate().map_err(|e| match e {
                super::ha::Error::Invalid { setting, message } => {
                    Error::Invalid { setting: format!("ha.{setting}"), message }
                }
                other => Error::Invalid { setting: "ha".into(), message: other.to_string() },
            })?;
        }
        super::features::validate(&self.feature_gates)
            .map_err(|e| Error::Invalid { setting: "featureGates".into(), message: e.to_string() })?;
        use super::features::{REGISTRY_SOURCES, SHADOW_ROLLOUT, SHARDING};
        if let Some(ha) = &self.ha
            && ha.shards > 1
            && !self.feature(SHARDING)
        {
            return invalid(
                "ha.shards",
                format!("{} shards need the {SHARDING} feature gate, which is off", ha.shards),
            );
        }
        if let Some((name, p)) = self.plugins.iter().find(|(_, p)| p.rollout.mode.shadows())
            && !self.feature(SHADOW_ROLLOUT)
        {
            return invalid(
                &format!("plugins.{name}.rollout.mode"),
                format!("{} needs the {SHADOW_ROLLOUT} feature gate, which is off", p.rollout.mode),
            );
        }
        if let Some(name) = self.plugins.iter().find(|(_, p)| p.source.is_some()).map(|(n, _)| n)
            && !self.feature(REGISTRY_SOURCES)
        {
            return invalid(
                &format!("plugins.{name}.source"),
                format!("plugins from registries need the {REGISTRY_SOURCES} feature gate, which is off"),
            );
        }
        if self.orphan_grace_seconds > MAX_PERIOD_SECONDS {
            return invalid(
                "--orphan-grace-seconds",
                format!("{} is out of range: give 0 to {MAX_PERIOD_SECONDS} (a year)", self.orphan_grace_seconds),
            );
        }
        let o = &self.sync.ownership;
        if !label_safe(&o.target) {
            return invalid(
                "sync.ownership.target",
                format!("{:?} must be a label value: 1-63 letters, digits, '-', '_' or '.'", o.target),
            );
        }
        if let Some((i, n)) =
            self.namespaces.iter().enumerate().find(|(_, n)| !namespace_name(n.strip_prefix('!').unwrap_or(n)))
        {
            return invalid(
                &format!("namespaces[{i}]"),
                format!(
                    "{n:?} is not a namespace name (lowercase letters, digits and '-'), nor one with a leading '!' to leave it out"
                ),
            );
        }
        if let NamespaceMapping::Prefix { prefix } = &self.namespace_mapping {
            let ok = !prefix.is_empty()
                && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !prefix.starts_with('-');
            if !ok {
                return invalid(
                    "namespaceMapping.prefix",
                    format!("{prefix:?} must be lowercase letters, digits and '-', not starting with '-'"),
                );
            }
        }
        if let Some(dir) = &self.plugins_dir
            && !dir.is_dir()
        {
            return invalid("pluginsDir", format!("{} is not a folder; create it or fix the path", dir.display()));
        }
        self.validate_registry()
    }

    /// Checks the registry settings and the plugins' registry sources (their keys are read).
    fn validate_registry(&self) -> Result<()> {
        if self.registry.check_seconds == 0 || self.registry.check_seconds > MAX_PERIOD_SECONDS {
            return Err(Error::Invalid {
                setting: "registry.checkSeconds".into(),
                message: format!(
                    "{} is out of range: give 1 to {MAX_PERIOD_SECONDS} (a year)",
                    self.registry.check_seconds
                ),
            });
        }
        self.registry_sources().map(drop)
    }

    /// The plugins that come from registries, their keys read (an error names the setting).
    pub fn registry_sources(&self) -> Result<Sources> {
        let limit = self.engine_config().max_component_bytes;
        Sources::from_config(&self.registry_config(), &self.registry, &self.registry_cache_dir(), limit).map_err(|e| {
            match e {
                crate::plugin::Error::Source { setting, message } => Error::Invalid { setting, message },
                other => Error::Invalid { setting: "plugins".into(), message: other.to_string() },
            }
        })
    }

    /// Where pulled plugin versions are cached: beside the compiled components.
    pub fn registry_cache_dir(&self) -> PathBuf {
        self.cache_root().join("oci")
    }

    /// The folder of downsync's caches: the one that holds the compiled components.
    pub fn cache_root(&self) -> PathBuf {
        let components = self.engine_config().cache_dir.unwrap_or_else(|| std::env::temp_dir().join("downsync"));
        components.parent().map_or(components.clone(), Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_config(yaml: &str) -> Result<RunConfig> {
        RunConfig::from_yaml(yaml, Path::new("test.yaml"))
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = mk_config("resources: [{apiVersion: v1, kind: ConfigMap}]").unwrap();
        assert_eq!(c.workers, 8);
        assert_eq!(c.namespace_mapping, NamespaceMapping::Identity);
        assert_eq!(c.sync.ownership.identity, "downsync");
        assert!(c.engine_config().tiered_compilation, "Winch first, Cranelift in the background");
        // The fixed ones, from the container's default.
        assert_eq!(c.orphan_grace_seconds, ORPHAN_GRACE_SECONDS);
        assert_eq!(c.metrics_cert_dir.as_deref(), Some(Path::new(METRICS_CERT_DIR)));
        assert_eq!(c.engine.deadline_ms, 1_000);
        c.validate().unwrap();
    }

    #[test]
    fn metrics_addr_off_in_the_file_serves_nothing_as_the_flag_does() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        for off in ["metricsAddr: off", "metricsAddr: \"off\"", "metricsAddr: ''", "metricsAddr: null"] {
            assert_eq!(mk_config(&format!("{base}{off}")).expect(off).metrics_addr, None, "{off}");
        }
        let c = mk_config(&format!("{base}metricsAddr: 127.0.0.1:9090")).unwrap();
        assert_eq!(c.metrics_addr, Some(SocketAddr::from(([127, 0, 0, 1], 9090))));
        let err = mk_config(&format!("{base}metricsAddr: nowhere")).unwrap_err().to_string();
        assert!(err.contains("metricsAddr") && err.contains("HOST:PORT") && err.contains("`off`"), "{err}");
    }

    #[test]
    fn type_errors_say_what_to_write_not_the_rust_type() {
        for (yaml, setting, said) in [
            ("workers: many", "workers", "a whole number, 0 or more"),
            ("engine: {fuel: lots}", "engine", "a whole number, 0 or more"),
            ("upstreamWrites: [statuses]", "upstreamWrites", "finalizer` or `status"),
            ("ha: 3", "ha", "a mapping of settings"),
        ] {
            let err = mk_config(yaml).map(|_| ()).expect_err(yaml).to_string();
            assert!(err.contains(setting) && err.contains(said), "{yaml}: {err}");
            for rust in ["usize", "u64", "u32", "struct", "HaConfig", "a boolean"] {
                assert!(!err.contains(rust), "{yaml}: {err}");
            }
        }
    }

    #[test]
    fn periods_beyond_a_year_are_refused_naming_the_setting_and_the_range() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        let c = RunConfig { orphan_grace_seconds: u64::MAX, ..mk_config(base).unwrap() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--orphan-grace-seconds") && err.contains("0 to 31536000"), "{err}");
    }

    #[test]
    fn a_misspelt_setting_is_an_error_that_names_it() {
        let err = mk_config("resorces: []").unwrap_err().to_string();
        assert!(err.contains("resorces") && err.contains("test.yaml"), "{err}");
    }

    #[test]
    fn no_resources_says_how_to_give_them() {
        let err = mk_config("workers: 2").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("resources") && err.contains("--resource"), "{err}");
    }

    #[test]
    fn a_bad_api_version_names_the_entry() {
        let c = mk_config("resources: [{apiVersion: v1, kind: ConfigMap}, {apiVersion: 'a//b', kind: X}]").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("resources[1].apiVersion"), "{err}");
    }

    #[test]
    fn resource_flags_parse_core_and_grouped_kinds() {
        let cm = ResourceConfig::parse_flag("v1/ConfigMap").unwrap();
        assert_eq!((cm.api_version.as_str(), cm.kind.as_str()), ("v1", "ConfigMap"));
        let d = ResourceConfig::parse_flag("apps/v1/Deployment").unwrap();
        assert_eq!((d.api_version.as_str(), d.kind.as_str()), ("apps/v1", "Deployment"));
        assert!(ResourceConfig::parse_flag("Deployment").is_err());
    }

    #[test]
    fn namespace_selection_includes_then_excludes() {
        let c = mk_config("namespaces: [a, b, '!b']\nresources:\n- {apiVersion: v1, kind: ConfigMap}").unwrap();
        let cm = &c.resources[0];
        assert!(c.selects_namespace(Some("a")));
        assert!(!c.selects_namespace(Some("b")), "excluded wins over included");
        assert!(!c.selects_namespace(Some("c")));
        assert!(c.selects_namespace(None), "cluster-scoped objects have no namespace to filter");
        assert!(!c.selects(cm, Some("a"), "kube-root-ca.crt"), "each cluster makes its own");
        assert!(c.selects(cm, Some("a"), "app-config"));
        let all_but = mk_config("namespaces: ['!c']\nresources: [{apiVersion: v1, kind: ConfigMap}]").unwrap();
        assert!(all_but.selects_namespace(Some("a")), "only exclusions: every other namespace");
        assert!(!all_but.selects_namespace(Some("c")));
        assert!(!all_but.selects_namespace(Some("kube-system")), "the system namespaces stay out");
        for bad in ["'!'", "'!!c'", "A", "'-a'"] {
            let c = mk_config(&format!("namespaces: [a, {bad}]\nresources: [{{apiVersion: v1, kind: ConfigMap}}]"));
            let err = c.unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("namespaces[1]"), "{bad}: {err}");
        }
        let err = mk_config("resources: [{apiVersion: v1, kind: ConfigMap, namespaces: [a]}]").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("namespaces"), "per-kind namespace lists are gone: {err}");
    }

    #[test]
    fn the_example_deployment_config_parses_and_validates() {
        let manifest: serde_json::Value =
            serde_yaml_ng::from_str(include_str!("../../../examples/deploy/config.yaml")).unwrap();
        let text = manifest["data"]["config.yaml"].as_str().unwrap();
        let mut c = mk_config(text).unwrap();
        assert_eq!(c.resources.len(), 6);
        // The pod mounts /plugins; here any existing folder stands in for it.
        c.plugins_dir = Some(std::env::temp_dir());
        c.validate().unwrap();
    }

    #[test]
    fn the_deployment_configmap_itself_is_a_config_file() {
        let path = Path::new("examples/deploy/config.yaml");
        let c = RunConfig::from_yaml(include_str!("../../../examples/deploy/config.yaml"), path).unwrap();
        assert_eq!(c.resources.len(), 6);
        let bad = "apiVersion: v1\nkind: ConfigMap\ndata:\n  config.yaml: |\n    workerz: 3\n";
        let err = RunConfig::from_yaml(bad, path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("data.\"config.yaml\"") && err.contains("workerz"), "{err}");
        let empty = "apiVersion: v1\nkind: ConfigMap\ndata: {}\n";
        assert!(RunConfig::from_yaml(empty, path).map(|_| ()).unwrap_err().to_string().contains("without data"));
    }

    #[test]
    fn a_misspelt_nested_setting_is_an_error_that_names_its_path() {
        for (yaml, path, word) in [
            ("upstream: {kubeconfg: /x}", "upstream", "kubeconfg"),
            ("downstream: {contxt: a}", "downstream", "contxt"),
            ("sync: {ownership: {targte: shard-b}}", "sync.ownership", "targte"),
            // Inside a tagged enum the YAML parser knows only the enclosing setting.
            ("sync: {strategy: {type: serverSideApply, forse: true}}", "sync", "forse"),
            ("sync: {conflictRetriez: 3}", "sync", "conflictRetriez"),
            ("engine: {fule: 3}", "engine", "fule"),
            ("namespaceMapping: {type: prefix, prefx: a-}", "namespaceMapping", "prefx"),
            ("plugins: {service: {priorty: 1}}", "plugins.service", "priorty"),
        ] {
            let err = mk_config(yaml).map(|_| ()).expect_err(yaml).to_string();
            assert!(err.contains(word) && err.contains(path), "{yaml}: {err}");
        }
    }

    #[test]
    fn workers_are_bounded_and_the_plugin_engine_has_a_slot_for_each() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        let huge = mk_config(&format!("{base}workers: 18446744073709551615")).unwrap();
        assert!(huge.validate().unwrap_err().to_string().contains("workers"));
        let c = mk_config(&format!("{base}workers: 200")).unwrap();
        assert!(c.validate().is_ok());
        assert!(c.engine_config().pool_instances >= 400, "a slot per worker and per shadow call");
        assert_eq!(RunConfig::default().engine_config().pool_instances, 64, "at least the engine's default");
    }

    #[test]
    fn kinds_share_the_workers_and_re_syncs_get_an_eighth() {
        let two = "resources: [{apiVersion: v1, kind: ConfigMap}, {apiVersion: v1, kind: Secret}]\n";
        for (yaml, per_kind, resync) in [
            (format!("{two}workers: 8"), 6, 1),
            (format!("{two}workers: 16"), 12, 2),
            (format!("{two}workers: 4"), 3, 1),
            (format!("{two}workers: 2"), 1, 1),
            (format!("{two}workers: 1"), 1, 1),
            ("resources: [{apiVersion: v1, kind: ConfigMap}]\nworkers: 8".to_string(), 8, 1),
        ] {
            let c = mk_config(&yaml).unwrap();
            assert!(c.validate().is_ok(), "{yaml}");
            assert_eq!((c.workers_per_kind(), c.resync_workers()), (per_kind, resync), "{yaml}");
        }
        for gone in ["workersPerKind: 8", "resyncWorkers: 1", "resyncYieldMillis: 0", "resyncPerSecond: 50"] {
            let err = mk_config(&format!("{two}{gone}")).map(|_| ()).unwrap_err().to_string();
            let setting = gone.split(':').next().unwrap_or_default();
            assert!(err.contains(setting), "{gone}: {err}");
        }
    }

    #[test]
    fn system_namespaces_are_excluded_unless_listed() {
        let c = mk_config("resources: [{apiVersion: v1, kind: ConfigMap}]").unwrap();
        let cm = &c.resources[0];
        for ns in SYSTEM_NAMESPACES {
            assert!(!c.selects_namespace(Some(ns)), "{ns}");
            assert!(!c.selects(cm, Some(ns), "x"), "{ns}");
        }
        assert!(c.selects_namespace(Some("default")));
        let listed = mk_config("namespaces: [kube-system]\nresources: [{apiVersion: v1, kind: ConfigMap}]").unwrap();
        assert!(listed.selects_namespace(Some("kube-system")), "an explicit entry overrides");
    }

    #[test]
    fn feature_gates_are_checked_and_each_gate_works_on_and_off() {
        use super::super::features::{
            CLIENT_INTENT, GATES, INPUT_PROJECTION, REGISTRY_SOURCES, SHADOW_ROLLOUT, SHARDING, TIERED_COMPILATION,
        };
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        let unknown = mk_config(&format!("{base}featureGates: {{NoSuchGate: true}}")).unwrap();
        let err = unknown.validate().unwrap_err().to_string();
        assert!(err.contains("featureGates") && err.contains("NoSuchGate"), "{err}");
        for gone in ["StatusUpsync", "UpstreamFinalizer", "NamespaceCleanup"] {
            let c = mk_config(&format!("{base}featureGates: {{{gone}: true}}")).unwrap();
            assert!(c.validate().is_err(), "{gone} duplicated a setting and is gone");
        }
        let on = mk_config(base).unwrap();
        let off = |gate: &str| mk_config(&format!("{base}featureGates: {{{gate}: false}}")).unwrap();
        for g in GATES {
            assert!(on.feature(g.name), "{} is on by default", g.name);
            assert!(!off(g.name).feature(g.name), "{} turns off", g.name);
        }
        // What each gate does, on and off.
        assert!(on.engine_config().tiered_compilation && !off(TIERED_COMPILATION).engine_config().tiered_compilation);
        assert!(on.engine_config().project_inputs && !off(INPUT_PROJECTION).engine_config().project_inputs);
        assert!(on.client_intent() && !off(CLIENT_INTENT).client_intent());
        let sharded = format!("{base}ha: {{shards: 3}}\n");
        assert!(mk_config(&sharded).unwrap().validate().is_ok());
        let err = mk_config(&format!("{sharded}featureGates: {{{SHARDING}: false}}")).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("ha.shards") && err.to_string().contains(SHARDING), "{err}");
        let shadow = format!("{base}plugins: {{stamp: {{rollout: {{mode: manual}}}}}}\n");
        assert!(mk_config(&shadow).unwrap().validate().is_ok());
        let err =
            mk_config(&format!("{shadow}featureGates: {{{SHADOW_ROLLOUT}: false}}")).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("plugins.stamp.rollout.mode") && err.to_string().contains("manual"), "{err}");
        let source = format!("{base}plugins: {{stamp: {{source: 'oci://127.0.0.1:5000/r/stamp:v1', verify: off}}}}\n");
        assert!(mk_config(&source).unwrap().validate().is_ok());
        let err =
            mk_config(&format!("{source}featureGates: {{{REGISTRY_SOURCES}: false}}")).unwrap().validate().unwrap_err();
        assert!(
            err.to_string().contains("plugins.stamp.source") && err.to_string().contains(REGISTRY_SOURCES),
            "{err}"
        );
    }

    #[test]
    fn a_registry_source_is_refused_at_start_naming_the_setting_unless_it_can_be_verified() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        let key = std::env::temp_dir().join(format!("downsync-config-key-{}.pub", std::process::id()));
        std::fs::write(&key, "not a key").expect("write");
        let src = "oci://127.0.0.1:5000/rules/stamp:v1";
        for (plugin, setting, says) in [
            (format!("{{source: {src}}}"), "plugins.stamp.keys", "verify: off"),
            (format!("{{source: {src}, verify: optional}}"), "plugins.stamp.keys", "no key is given"),
            (format!("{{source: {src}, keys: [{}]}}", key.display()), "plugins.stamp.keys[0]", "P-256"),
            (format!("{{source: {src}, keys: [/nonexistent/cosign.pub]}}"), "plugins.stamp.keys[0]", "cannot read"),
            ("{source: 'rules/stamp:v1', verify: off}".to_string(), "plugins.stamp.source", "oci://"),
        ] {
            let yaml = format!("{base}plugins: {{stamp: {plugin}}}\n");
            let err = mk_config(&yaml).and_then(|c| c.validate()).expect_err(&yaml).to_string();
            assert!(err.contains(setting) && err.contains(says), "{yaml}: {err}");
        }
        let star = format!("{base}plugins: {{'*': {{source: {src}, verify: off}}}}\n");
        assert!(mk_config(&star).and_then(|c| c.validate()).expect_err("star").to_string().contains("\"*\""));
        let off = format!("{base}plugins: {{stamp: {{source: {src}, verify: off}}}}\nregistry: {{checkSeconds: 0}}\n");
        let err = mk_config(&off).and_then(|c| c.validate()).expect_err("interval").to_string();
        assert!(err.contains("registry.checkSeconds"), "{err}");
        let ok = format!("{base}plugins: {{stamp: {{source: {src}, verify: off}}}}\n");
        let config = mk_config(&ok).expect("parses");
        assert!(config.validate().is_ok());
        assert_eq!(config.registry_sources().expect("sources").list[0].source.to_string(), src);
        let _ = std::fs::remove_file(&key);
    }

    #[test]
    fn a_removed_setting_is_refused_naming_it_and_what_replaced_it() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        for (yaml, setting, instead) in [
            ("ha: {enabled: true, shards: 2}", "ha.enabled", "HA is on when `ha` is given"),
            ("orphanGraceSeconds: 10", "orphanGraceSeconds", "fixed 30 s"),
            ("engine: {deadlineMs: 500}", "engine.deadlineMs", "1 s"),
            ("metricsCertDir: /certs", "metricsCertDir", "/etc/downsync/tls"),
            ("plugins: {stamp: {instances: reused}}", "plugins.stamp.instances", "stateless"),
            ("plugins: {stamp: {rollout: {shadow: true}}}", "plugins.stamp.rollout.shadow", "mode: shadow"),
            ("plugins: {stamp: {rollout: {promote: manual}}}", "plugins.stamp.rollout.promote", "mode: manual"),
            ("plugins: {stamp: {rollout: {windowSeconds: 60}}}", "plugins.stamp.rollout.windowSeconds", "100 calls"),
            ("plugins: {stamp: {rollout: {windowCalls: 3}}}", "plugins.stamp.rollout.windowCalls", "100 calls"),
            ("excludeNamespaces: [b]", "excludeNamespaces", "'!NAME'"),
            ("upstreamFinalizer: true", "upstreamFinalizer", "upstreamWrites: [finalizer]"),
            ("statusUpsync: true", "statusUpsync", "upstreamWrites: [status]"),
            ("engine: {memoryBytes: 134217728}", "engine.memoryBytes", "memory limit"),
        ] {
            let err = mk_config(&format!("{base}{yaml}")).map(|_| ()).expect_err(yaml).to_string();
            assert!(err.contains(&format!("`{setting}` is gone")) && err.contains(instead), "{yaml}: {err}");
        }
        let drift =
            "resources:\n- {apiVersion: v1, kind: ConfigMap}\n- {apiVersion: v1, kind: Secret, drift: {keep: [hpa]}}";
        let err = mk_config(drift).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("`resources[1].drift.keep` is gone") && err.contains("managers: {NAME: keep}"), "{err}");
        let inner = "apiVersion: v1\nkind: ConfigMap\ndata:\n  config.yaml: |\n    ha: {enabled: false}\n";
        let err = mk_config(inner).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("`ha.enabled` is gone"), "{err}");
    }

    #[test]
    fn ha_is_on_when_given() {
        let base = "resources: [{apiVersion: v1, kind: ConfigMap}]\n";
        assert!(mk_config(base).unwrap().ha().is_none());
        assert_eq!(mk_config(&format!("{base}ha: {{}}")).unwrap().ha().map(|h| h.shards), Some(1));
        assert_eq!(mk_config(&format!("{base}ha: {{shards: 4}}")).unwrap().ha().map(|h| h.shards), Some(4));
    }

    #[test]
    fn the_target_must_be_a_label_value_and_the_identity_is_gone() {
        let c =
            mk_config("resources: [{apiVersion: v1, kind: ConfigMap}]\nsync: {ownership: {target: 'a b'}}").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("sync.ownership.target"), "{err}");
        let err = mk_config("resources: [{apiVersion: v1, kind: ConfigMap}]\nsync: {ownership: {identity: x}}")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sync.ownership.identity` is gone") && err.contains("sync.ownership.target"), "{err}");
    }
}
