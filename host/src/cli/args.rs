//! The command line: the commands and flags of the downsync binary (clap), and how the flags
//! of `run` and `diff` land in the one typed configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use downsync::app::{ResourceConfig, RunConfig};
use downsync::plugin::{EngineConfig, scaffold};
use downsync::sync::NamespaceMapping;

/// `downsync --version`: the version and the commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DOWNSYNC_COMMIT"), ")");

/// downsync: syncs desired objects from an upstream Kubernetes API into a downstream cluster.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
pub(crate) struct Args {
    /// Log format (logs go to stderr; RUST_LOG sets the level, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Syncs the configured resources from upstream to downstream until stopped (SIGTERM).
    Run(RunArgs),
    /// Shows what `run` would change downstream, per object, with the rules applied. Writes nothing.
    Diff(SourceArgs),
    /// Work with rule plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Shows which replica holds which shard, from the Leases in the downstream cluster.
    Shards(ShardsArgs),
    /// Says, for each field where an object's downstream copy differs from upstream, which
    /// plugin (or built-in rule) kept or changed it; asks a running downsync (--addr).
    Explain(ExplainArgs),
}

impl Command {
    /// The commands that answer on stdout and exit log warnings and errors only.
    pub(crate) fn is_quiet(&self) -> bool {
        matches!(
            self,
            Command::Plugin(
                PluginCommand::Check { .. }
                    | PluginCommand::Test { .. }
                    | PluginCommand::New { .. }
                    | PluginCommand::Promote { .. }
                    | PluginCommand::Status { .. }
                    | PluginCommand::Push { .. }
                    | PluginCommand::Pull { .. }
            ) | Command::Explain(_)
                | Command::Shards(_)
        )
    }
}

/// Where a running downsync serves its operations endpoints, and who asks.
/// How a registry is reached by `plugin push` and `plugin pull`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RegistryArgs {
    /// A docker config file with the registry's credentials (default: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`, where `docker login` writes, if it exists).
    #[arg(long, value_name = "FILE")]
    pub(crate) credentials: Option<PathBuf>,
    /// PEM file of CA certificates trusted for the registry, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub(crate) insecure: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EndpointArgs {
    /// Where the running downsync serves /metrics (its --metrics-addr): HOST:PORT or
    /// https://HOST:PORT (HTTPS), http://HOST:PORT for one run with --insecure-endpoints.
    #[arg(long, env = "DOWNSYNC_ADDR")]
    pub(crate) addr: String,
    /// A bearer token the downstream cluster grants get on the endpoint (such as
    /// `kubectl create token NAME`); required over HTTPS.
    #[arg(long, env = "DOWNSYNC_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A PEM file of the CA that signed downsync's certificate (the one mounted at
    /// /etc/downsync/tls).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_skip_tls_verify")]
    pub(crate) certificate_authority: Option<PathBuf>,
    /// Accept downsync's certificate unverified (the self-signed one it makes by default).
    #[arg(long)]
    pub(crate) insecure_skip_tls_verify: bool,
}

/// Which object, and where downsync serves.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The upstream kind (Service, ConfigMap) or its plural.
    pub(crate) kind: String,
    /// NAMESPACE/NAME (upstream namespace), or NAME for a cluster-scoped kind; from many kcp
    /// workspaces, CLUSTER/NAMESPACE/NAME (CLUSTER: the logical cluster, `kcp.io/cluster`).
    pub(crate) object: String,
    #[command(flatten)]
    pub(crate) endpoint: EndpointArgs,
    /// Print the JSON answer instead.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the Leases of a target are.
#[derive(Debug, clap::Args)]
pub(crate) struct ShardsArgs {
    /// A YAML config file: its downstream, target and `ha:` section are used.
    #[arg(long, env = "DOWNSYNC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Downstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub(crate) downstream_kubeconfig: Option<PathBuf>,
    /// Downstream kubeconfig context (default: the current one).
    #[arg(long)]
    pub(crate) downstream_context: Option<String>,
    /// The sync target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Namespace of the Leases (default: ha.namespace, POD_NAMESPACE, else default).
    #[arg(long)]
    pub(crate) ha_namespace: Option<String>,
}

/// What to sync, from where to where. Flags override the config file.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// A YAML config file, or a ConfigMap manifest holding one as data."config.yaml" (such as
    /// examples/deploy/config.yaml, which works here as it is).
    #[arg(long, env = "DOWNSYNC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Upstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub(crate) upstream_kubeconfig: Option<PathBuf>,
    /// Upstream kubeconfig context (default: the current one).
    #[arg(long)]
    pub(crate) upstream_context: Option<String>,
    /// Downstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub(crate) downstream_kubeconfig: Option<PathBuf>,
    /// Downstream kubeconfig context (default: the current one).
    #[arg(long)]
    pub(crate) downstream_context: Option<String>,
    /// Folder of `<name>.wasm` rule plugins, hot-reloaded.
    #[arg(long)]
    pub(crate) plugins_dir: Option<PathBuf>,
    /// A kind to sync, as API_VERSION/KIND (v1/ConfigMap, apps/v1/Deployment); repeatable.
    /// Replaces the config file's list.
    #[arg(long = "resource", value_name = "API_VERSION/KIND")]
    pub(crate) resources: Vec<String>,
    /// Label selector for the kinds given with --resource.
    #[arg(long)]
    pub(crate) selector: Option<String>,
    /// Upstream namespace to sync, or `!NAME` never to sync; repeatable, replaces the config's
    /// `namespaces:` (default: all but kube-system, kube-public and kube-node-lease, which are
    /// synced only when named).
    #[arg(long = "namespace")]
    pub(crate) namespaces: Vec<String>,
    /// Upstream namespace never to sync; repeatable (the config's `namespaces:` entry `!NAME`).
    #[arg(long = "exclude-namespace")]
    pub(crate) exclude_namespaces: Vec<String>,
    /// Name downstream namespaces PREFIX + the upstream name.
    #[arg(long, conflicts_with = "hashed_namespaces")]
    pub(crate) namespace_prefix: Option<String>,
    /// Name downstream namespaces by a hash of target and upstream name (kcp style).
    #[arg(long)]
    pub(crate) hashed_namespaces: bool,
    /// The sync target's name in the ownership stamp.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Feature gates, as Name=true,Other=false (added to the config file's `featureGates`).
    #[arg(long, value_name = "NAME=BOOL,...", long_help = downsync::app::features::help())]
    pub(crate) feature_gates: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Concurrent syncs.
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Where /metrics, /plugins, /explain and /shards are served over HTTPS (bearer token,
    /// TokenReview and SubjectAccessReview) with the certificate mounted at /etc/downsync/tls
    /// (tls.crt, tls.key), else a self-signed one; /healthz and /readyz answer plainly on the
    /// next port. `off` to serve nothing.
    #[arg(long)]
    pub(crate) metrics_addr: Option<String>,
    /// Development only: serve every endpoint plainly and without authentication, on 127.0.0.1
    /// at --metrics-addr's port (probes too).
    #[arg(long)]
    pub(crate) insecure_endpoints: bool,
    /// Sync once and exit: 0 when every object synced, 1 otherwise.
    #[arg(long)]
    pub(crate) once: bool,
    /// Put a finalizer on upstream objects, so their deletion waits for the downstream copy's
    /// (adds `finalizer` to the config's `upstreamWrites`).
    #[arg(long)]
    pub(crate) upstream_finalizer: bool,
    /// Copy downstream status to the upstream objects' status subresource (adds `status` to the
    /// config's `upstreamWrites`).
    #[arg(long)]
    pub(crate) status_upsync: bool,
    /// Seconds before owned downstream objects without an upstream object are deleted at startup
    /// (default 30). For tests, which cannot wait as long; hidden.
    #[arg(long, hide = true)]
    pub(crate) orphan_grace_seconds: Option<u64>,
    /// Calls of a new plugin version that end its trial window (default 100). For tests, which
    /// have fewer objects; hidden.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) trial_window_calls: Option<u64>,
    /// Run as one of several replicas coordinated through Leases in the downstream cluster (as
    /// an `ha:` section in the config does); only the holder of a shard's Lease writes its
    /// objects.
    #[arg(long)]
    pub(crate) ha: bool,
    /// Split upstream namespaces into N shards, each its own Lease (`ha.shards`); implies --ha.
    #[arg(long, value_name = "N")]
    pub(crate) ha_shards: Option<u32>,
    /// Lease duration, renew deadline and retry period in seconds, as LEASE,RENEW,RETRY
    /// (default 15,10,2 as client-go). For tests, which cannot wait as long; hidden.
    #[arg(long, value_name = "LEASE,RENEW,RETRY", hide = true)]
    pub(crate) ha_timing: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Loads a plugin component, checks it against the downsync:rules world and prints what it describes.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        #[command(flatten)]
        budget: Budget,
    },
    /// Runs a plugin against fixture cases (`CASE/{existing,desired,expected}.yaml` or
    /// `CASE/decision.yaml`); prints a diff for each failing case and exits non-zero.
    Test {
        /// The `.wasm` component.
        file: PathBuf,
        /// The folder holding one sub-folder per case.
        fixtures: PathBuf,
        #[command(flatten)]
        budget: Budget,
    },
    /// Shows each loaded plugin of a running downsync: the active version, its trial, a shadow
    /// version and its progress, calls, errors by class, divergences, the last error.
    Status {
        #[command(flatten)]
        endpoint: EndpointArgs,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
    },
    /// Promotes the version of a plugin now running in shadow: writes `<stem>.promote` (the
    /// component's sha256) next to it, which the running downsync acts on.
    Promote {
        /// The `.wasm` component in the plugins folder, as it is now (the shadow version).
        file: PathBuf,
    },
    /// Runs a new version read-only over the live objects of the kinds it handles and prints,
    /// per object, what it would write differently from the version in use. Writes nothing.
    Replay {
        /// The new `.wasm` component.
        file: PathBuf,
        /// Read the live objects of the clusters given by the source flags (as `run`).
        #[arg(long, required = true)]
        against_cluster: bool,
        #[command(flatten)]
        source: Box<SourceArgs>,
    },
    /// Checks a component as `plugin check` does, then pushes it to a registry as a Wasm OCI
    /// artifact and prints its digest, to sign with `cosign sign --key cosign.key REF@DIGEST`.
    Push {
        /// The `.wasm` component.
        file: PathBuf,
        /// Where to: `oci://REGISTRY/REPOSITORY:TAG`.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        budget: Budget,
    },
    /// Pulls a plugin from a registry, verifies its cosign signature and writes the component.
    Pull {
        /// `oci://REGISTRY/REPOSITORY:TAG` or `oci://…@sha256:DIGEST`.
        reference: String,
        /// A cosign public key (PEM) trusted to sign it; repeat for several.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Take it without verifying a signature.
        #[arg(long, conflicts_with = "key")]
        no_verify: bool,
        /// Where to write the component (default: ./REPOSITORY-NAME.wasm).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Writes a plugin skeleton with fixtures that pass `plugin test` once built.
    New {
        /// The plugin's name: lowercase letters, digits and '-'.
        name: String,
        /// The guest language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Lang,
        /// The folder to write (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust: downsync's `plugins/sdk` to depend on (default: found above DIR or the
        /// working directory).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// The per-call budgets to check or test a plugin with: test with the ones it will run with
/// (the run config's `engine.fuel`, and the memory cap `downsync run` logs at start).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Budget {
    /// Fuel per call (default: the engine's, 200000000).
    #[arg(long, value_name = "N")]
    pub(crate) fuel: Option<u64>,
    /// Linear memory per call, in bytes, or with a Ki, Mi or Gi suffix (default: what `downsync
    /// run` with 8 workers gives a call here: half of the container's memory limit, else the
    /// machine's, shared by the workers, between 64Mi and 1Gi).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) memory: Option<usize>,
}

impl Budget {
    pub(crate) fn engine(&self) -> EngineConfig {
        let workers = RunConfig::default().workers;
        let mut c =
            EngineConfig { memory_bytes: downsync::plugin::memory_per_call(workers), ..EngineConfig::default() };
        if let Some(fuel) = self.fuel {
            c.fuel = fuel;
        }
        if let Some(memory) = self.memory {
            c.memory_bytes = memory;
        }
        c
    }
}

/// `65536`, `64Ki`, `64Mi`, `1Gi`.
fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("{text:?} is not a size such as 65536 or 64Mi"))?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        other => return Err(format!("unit {other:?} in {text:?}: use Ki, Mi or Gi")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

impl SourceArgs {
    pub(crate) fn into_config(self) -> Result<RunConfig> {
        let mut c = match &self.config {
            Some(path) => RunConfig::from_file(path)?,
            None => RunConfig::default(),
        };
        if self.upstream_kubeconfig.is_some() {
            c.upstream.kubeconfig = self.upstream_kubeconfig;
        }
        if self.upstream_context.is_some() {
            c.upstream.context = self.upstream_context;
        }
        if self.downstream_kubeconfig.is_some() {
            c.downstream.kubeconfig = self.downstream_kubeconfig;
        }
        if self.downstream_context.is_some() {
            c.downstream.context = self.downstream_context;
        }
        if self.plugins_dir.is_some() {
            c.plugins_dir = self.plugins_dir;
        }
        if !self.resources.is_empty() {
            c.resources = self
                .resources
                .iter()
                .map(|r| {
                    let mut rc = ResourceConfig::parse_flag(r)?;
                    rc.label_selector.clone_from(&self.selector);
                    Ok(rc)
                })
                .collect::<Result<_, downsync::app::config::Error>>()?;
        } else if self.selector.is_some() {
            anyhow::bail!("--selector applies to the kinds given with --resource; give at least one --resource");
        }
        if !self.namespaces.is_empty() {
            c.namespaces = self.namespaces;
        }
        c.namespaces.extend(self.exclude_namespaces.into_iter().map(|n| format!("!{n}")));
        if let Some(prefix) = self.namespace_prefix {
            c.namespace_mapping = NamespaceMapping::Prefix { prefix };
        }
        if self.hashed_namespaces {
            c.namespace_mapping = NamespaceMapping::Hashed;
        }
        if let Some(t) = self.target {
            c.sync.ownership.target = t;
        }
        if let Some(flag) = &self.feature_gates {
            let gates = downsync::app::features::parse(flag).context("--feature-gates")?;
            c.feature_gates.extend(gates);
        }
        Ok(c)
    }
}

impl RunArgs {
    pub(crate) fn into_config(self) -> Result<RunConfig> {
        let mut c = self.source.into_config()?;
        if let Some(w) = self.workers {
            c.workers = w;
        }
        if let Some(addr) = self.metrics_addr {
            c.metrics_addr = match addr.as_str() {
                "off" | "" => None,
                a => Some(a.parse::<SocketAddr>().with_context(|| {
                    format!("--metrics-addr {a}: expected HOST:PORT such as 0.0.0.0:8080, or `off`")
                })?),
            };
        }
        use downsync::app::config::UpstreamWrite;
        for (flag, write) in
            [(self.upstream_finalizer, UpstreamWrite::Finalizer), (self.status_upsync, UpstreamWrite::Status)]
        {
            if flag && !c.upstream_writes.contains(&write) {
                c.upstream_writes.push(write);
            }
        }
        if let Some(g) = self.orphan_grace_seconds {
            c.orphan_grace_seconds = g;
        }
        if let Some(calls) = self.trial_window_calls {
            c.plugins.entry("*".into()).or_default();
            for settings in c.plugins.values_mut() {
                settings.rollout.window_calls = calls;
            }
        }
        if self.ha || self.ha_shards.is_some() {
            c.ha.get_or_insert_with(Default::default);
        }
        if let (Some(ha), Some(n)) = (c.ha.as_mut(), self.ha_shards) {
            ha.shards = n;
        }
        if let Some(t) = &self.ha_timing {
            let parts: Vec<u64> = t
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("--ha-timing {t}: expected three whole seconds, such as 15,10,2"))?;
            let [lease, renew, retry] = parts[..] else {
                anyhow::bail!("--ha-timing {t}: expected LEASE,RENEW,RETRY, such as 15,10,2");
            };
            let ha = c.ha.as_mut().context("--ha-timing applies to --ha")?;
            ha.lease_duration_seconds = lease;
            ha.renew_deadline_seconds = renew;
            ha.retry_period_seconds = retry;
        }
        Ok(c)
    }
}
