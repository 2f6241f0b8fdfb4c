//! The downsync command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use downsync::app::{ResourceConfig, RunConfig, RunOptions};
use downsync::plugin::{EngineConfig, Plugin, PluginEngine, fixtures, scaffold};
use downsync::sync::NamespaceMapping;

/// `downsync --version`: the version and the commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DOWNSYNC_COMMIT"), ")");

/// downsync: syncs desired objects from an upstream Kubernetes API into a downstream cluster.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Args {
    /// Log format (logs go to stderr; RUST_LOG sets the level, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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

/// Which object, and where downsync serves.
#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The upstream kind (Service, ConfigMap) or its plural.
    kind: String,
    /// NAMESPACE/NAME (upstream namespace), or NAME for a cluster-scoped kind.
    object: String,
    /// Where the running downsync serves /metrics (its --metrics-addr), as HOST:PORT.
    #[arg(long, env = "DOWNSYNC_ADDR")]
    addr: String,
    /// Print the JSON answer instead.
    #[arg(long)]
    json: bool,
}

/// Where the Leases of a target are.
#[derive(Debug, clap::Args)]
struct ShardsArgs {
    /// A YAML config file: its downstream, target and `ha:` section are used.
    #[arg(long, env = "DOWNSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Downstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    downstream_kubeconfig: Option<PathBuf>,
    /// Downstream kubeconfig context (default: the current one).
    #[arg(long)]
    downstream_context: Option<String>,
    /// The sync target.
    #[arg(long)]
    target: Option<String>,
    /// Namespace of the Leases (default: ha.namespace, POD_NAMESPACE, else default).
    #[arg(long)]
    ha_namespace: Option<String>,
}

/// What to sync, from where to where. Flags override the config file.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// A YAML config file, or a ConfigMap manifest holding one as data."config.yaml" (such as
    /// examples/deploy/config.yaml, which works here as it is).
    #[arg(long, env = "DOWNSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Upstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    upstream_kubeconfig: Option<PathBuf>,
    /// Upstream kubeconfig context (default: the current one).
    #[arg(long)]
    upstream_context: Option<String>,
    /// Downstream kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    downstream_kubeconfig: Option<PathBuf>,
    /// Downstream kubeconfig context (default: the current one).
    #[arg(long)]
    downstream_context: Option<String>,
    /// Folder of `<name>.wasm` rule plugins, hot-reloaded.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// A kind to sync, as API_VERSION/KIND (v1/ConfigMap, apps/v1/Deployment); repeatable.
    /// Replaces the config file's list.
    #[arg(long = "resource", value_name = "API_VERSION/KIND")]
    resources: Vec<String>,
    /// Label selector for the kinds given with --resource.
    #[arg(long)]
    selector: Option<String>,
    /// Upstream namespace to sync; repeatable (default: all but kube-system, kube-public and
    /// kube-node-lease, which are synced only when named here or in the config's `namespaces:`).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Upstream namespace never to sync; repeatable.
    #[arg(long = "exclude-namespace")]
    exclude_namespaces: Vec<String>,
    /// Name downstream namespaces PREFIX + the upstream name.
    #[arg(long, conflicts_with = "hashed_namespaces")]
    namespace_prefix: Option<String>,
    /// Name downstream namespaces by a hash of target and upstream name (kcp style).
    #[arg(long)]
    hashed_namespaces: bool,
    /// This instance's name in the ownership stamp.
    #[arg(long)]
    identity: Option<String>,
    /// The sync target's name in the ownership stamp.
    #[arg(long)]
    target: Option<String>,
    /// Feature gates, as Name=true,Other=false (added to the config file's `featureGates`).
    #[arg(long, value_name = "NAME=BOOL,...", long_help = downsync::app::features::help())]
    feature_gates: Option<String>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Concurrent syncs.
    #[arg(long)]
    workers: Option<usize>,
    /// Where /metrics, /healthz and /readyz are served; `off` to not serve them.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Sync once and exit: 0 when every object synced, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// Put a finalizer on upstream objects, so their deletion waits for the downstream copy's.
    #[arg(long)]
    upstream_finalizer: bool,
    /// Copy downstream status to the upstream objects' status subresource.
    #[arg(long)]
    status_upsync: bool,
    /// Seconds before owned downstream objects without an upstream object are deleted at startup.
    #[arg(long)]
    orphan_grace_seconds: Option<u64>,
    /// Keep the downstream namespaces downsync created after their upstream namespace is gone
    /// (by default they are deleted once they hold nothing downsync does not own).
    #[arg(long)]
    keep_namespaces: bool,
    /// Run as one of several replicas coordinated through Leases in the downstream cluster
    /// (`ha.enabled`); only the holder of a shard's Lease writes its objects.
    #[arg(long)]
    ha: bool,
    /// Split upstream namespaces into N shards, each its own Lease (`ha.shards`).
    #[arg(long, value_name = "N")]
    ha_shards: Option<u32>,
    /// Lease duration, renew deadline and retry period in seconds, as LEASE,RENEW,RETRY
    /// (default 15,10,2 as client-go). For tests, which cannot wait as long; hidden.
    #[arg(long, value_name = "LEASE,RENEW,RETRY", hide = true)]
    ha_timing: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
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
        /// Where the running downsync serves /metrics (its --metrics-addr), as HOST:PORT.
        #[arg(long, env = "DOWNSYNC_ADDR")]
        addr: String,
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
/// (the run config's `engine.fuel` and `engine.memoryBytes`).
#[derive(Debug, Clone, clap::Args)]
struct Budget {
    /// Fuel per call (default: the engine's, 200000000).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Linear memory per call, in bytes, or with a Ki, Mi or Gi suffix (default: 64Mi).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<usize>,
}

impl Budget {
    fn engine(&self) -> EngineConfig {
        let mut c = EngineConfig::default();
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
    fn into_config(self) -> Result<RunConfig> {
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
        c.exclude_namespaces.extend(self.exclude_namespaces);
        if let Some(prefix) = self.namespace_prefix {
            c.namespace_mapping = NamespaceMapping::Prefix { prefix };
        }
        if self.hashed_namespaces {
            c.namespace_mapping = NamespaceMapping::Hashed;
        }
        if let Some(i) = self.identity {
            c.sync.ownership.identity = i;
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
    fn into_config(self) -> Result<RunConfig> {
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
        c.upstream_finalizer |= self.upstream_finalizer;
        c.keep_namespaces |= self.keep_namespaces;
        c.status_upsync |= self.status_upsync;
        if let Some(g) = self.orphan_grace_seconds {
            c.orphan_grace_seconds = g;
        }
        c.ha.enabled |= self.ha;
        if let Some(n) = self.ha_shards {
            c.ha.shards = n;
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
            c.ha.lease_duration_seconds = lease;
            c.ha.renew_deadline_seconds = renew;
            c.ha.retry_period_seconds = retry;
        }
        Ok(c)
    }
}

/// Starts logging to stderr. `quiet` (the commands that answer on stdout and exit, such as
/// `plugin check`) logs warnings and errors only, unless RUST_LOG says otherwise: how the
/// engine compiled is not what a person checking a plugin asked.
fn init_logs(format: LogFormat, quiet: bool) {
    // kube's client logs every failed connection attempt at ERROR without naming the server;
    // downsync reports a lost connection itself, once per side, with the URL.
    let level = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},kube_client=error,kube_client::client::builder=off"))
    });
    // Colour only for a person at a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// One malloc arena instead of glibc's default of eight per core. Each thread that meets a
/// locked arena gets another, and every arena keeps its own freed memory: measured at 10,000
/// objects (docs/benchmarks.md, section 4), the restart's peak RSS fell from 131.4 to 117.9 MiB,
/// with the per-thread caches in front of the arena keeping malloc off the lock. A
/// `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread
        // exists, and a refusal (return 0) leaves the default in place.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Lets a closed stdout end the process quietly, as it ends `cat` or `grep`
/// (`downsync plugin check X | head -1`): SIGPIPE back to its default action. Rust ignores it,
/// so that a write to a closed pipe fails instead, and `println!` then panics. Not for `run`: a
/// long-lived process handles its failed writes itself.
fn die_quietly_on_a_closed_stdout() {
    // SAFETY: signal(2) only resets a disposition; it runs before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    if !matches!(args.command, Command::Run(_)) {
        die_quietly_on_a_closed_stdout();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_command(args)) {
        Ok(code) => code,
        // The cause chain on one line; no backtrace even with RUST_BACKTRACE set: these are
        // the user's errors (a setting, a cluster), not the program's.
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause said once: many errors here already end
/// with their cause's text (`cannot read plugin x.wasm: No such file or directory (os error 2)`),
/// and a cause's line breaks (a parser's dump) become spaces.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

async fn run_command(args: Args) -> Result<ExitCode> {
    let quiet = matches!(
        args.command,
        Command::Plugin(
            PluginCommand::Check { .. }
                | PluginCommand::Test { .. }
                | PluginCommand::New { .. }
                | PluginCommand::Promote { .. }
                | PluginCommand::Status { .. }
        ) | Command::Explain(_)
            | Command::Shards(_)
    );
    init_logs(args.log_format, quiet);
    match args.command {
        Command::Run(run) => {
            let once = run.once;
            let config = run.into_config()?;
            let opts = RunOptions { once, instance: std::env::var("POD_NAME").ok() };
            let summary = downsync::app::run(config, opts, shutdown_signal()).await?;
            if once && summary.failed > 0 {
                eprintln!("{} objects synced, {} failed; see the log above", summary.synced, summary.failed);
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(source) => {
            let config = source.into_config()?;
            let mut out = String::new();
            let result = downsync::app::diff::diff(config, &mut out).await;
            print!("{out}");
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shards(a) => {
            let mut c = match &a.config {
                Some(path) => RunConfig::from_file(path)?,
                None => RunConfig::default(),
            };
            if a.downstream_kubeconfig.is_some() {
                c.downstream.kubeconfig = a.downstream_kubeconfig;
            }
            if a.downstream_context.is_some() {
                c.downstream.context = a.downstream_context;
            }
            if let Some(t) = a.target {
                c.sync.ownership.target = t;
            }
            if a.ha_namespace.is_some() {
                c.ha.namespace = a.ha_namespace;
            }
            let timeout = downsync::app::config::CONNECT_TIMEOUT;
            let ua = downsync::app::startup::user_agent(&c);
            let down = downsync::kube::clients::connect("downstream", &c.downstream, timeout, &ua).await?;
            let (ns, target) = (c.ha.resolved_namespace(), c.sync.ownership.target.clone());
            let rows = downsync::app::ha::read_leases(down.client, &ns, &target).await?;
            if rows.is_empty() {
                println!("no Leases of target {target} in namespace {ns}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<40} {:<7} {:<30} {:>9} {:>9}", "LEASE", "ROLE", "HOLDER", "RENEWED", "DURATION");
            for r in rows {
                let holder = if r.holder.is_empty() { "(released)".to_string() } else { r.holder };
                let age = if r.age_seconds < 0 { "-".to_string() } else { format!("{}s ago", r.age_seconds) };
                println!("{:<40} {:<7} {:<30} {:>9} {:>8}s", r.name, r.role, holder, age, r.duration_seconds);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(a) => {
            let (namespace, name) = match a.object.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, a.object.as_str()),
            };
            let mut path = format!("/explain?kind={}&name={name}", a.kind);
            if let Some(ns) = namespace {
                path.push_str(&format!("&namespace={ns}"));
            }
            let answer = downsync::app::ops_client::get_json(&a.addr, &path).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", downsync::app::explain::render(&answer));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Status { addr, json }) => {
            let answer = downsync::app::ops_client::get_json(&addr, "/plugins").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", downsync::app::ops_client::render_plugins(&answer));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Promote { file }) => {
            let bytes = downsync::plugin::read_component(&file, downsync::plugin::DEFAULT_MAX_COMPONENT_BYTES)?;
            let digest = downsync::plugin::sha256_hex(&bytes);
            let stem = file.file_stem().and_then(|s| s.to_str()).context("the file has no name")?;
            let marker = file.with_file_name(format!("{stem}.promote"));
            std::fs::write(&marker, format!("{digest}\n")).with_context(|| format!("writing {}", marker.display()))?;
            println!("wrote {} ({digest}); a running downsync promotes that version once it sees it", marker.display());
            println!("(for a ConfigMap-mounted folder, add the key {stem}.promote with that value to the ConfigMap)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Replay { file, against_cluster: _, source }) => {
            let config = source.into_config()?;
            let mut out = String::new();
            let result = downsync::app::replay::replay(config, &file, &mut out).await;
            print!("{out}");
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check { file, budget }) => {
            let plugin = load(&file, &budget)?;
            print_info(&plugin);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Test { file, fixtures: dir, budget }) => {
            let plugin = load(&file, &budget)?;
            let cases = fixtures::load_dir(&dir).with_context(|| format!("loading fixtures from {}", dir.display()))?;
            if cases.is_empty() {
                anyhow::bail!("no fixture cases in {}", dir.display());
            }
            let outcomes = fixtures::run_all(&plugin, &cases);
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok    {}", o.name),
                    Some(why) => println!("FAIL  {}\n{}", o.name, indent(why)),
                }
            }
            println!(
                "{} passed, {failed} failed ({} {})",
                outcomes.len() - failed,
                plugin.name(),
                plugin.info().version
            );
            Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk }) => {
            new_plugin(name, lang, dir, sdk)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn new_plugin(name: String, lang: scaffold::Lang, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let skeleton = scaffold::Skeleton { name, lang, dir: dir.clone(), sdk };
    let written = skeleton.write().context("writing the plugin skeleton")?;
    println!("wrote {} files in {}", written.files.len(), dir.display());
    println!("build:  (cd {} && {})", dir.display(), written.build);
    println!(
        "test:   downsync plugin test {} {}",
        dir.join(&written.component).display(),
        dir.join("fixtures").display()
    );
    Ok(())
}

fn load(file: &std::path::Path, budget: &Budget) -> Result<Plugin> {
    let engine = PluginEngine::new(budget.engine()).context("starting the wasm engine")?;
    Plugin::load_file(&engine, file).with_context(|| format!("checking {}", file.display()))
}

fn print_info(plugin: &Plugin) {
    let info = plugin.info();
    println!("name:    {}", info.name);
    println!("version: {}", info.version);
    println!("sha256:  {}", plugin.digest());
    println!("wit:     downsync:rules@{}", info.wit);
    // Whether `instances: reused` would be honoured (version build metadata `+stateless`).
    println!("stateless: {}", if info.declares_stateless() { "yes (instances: reused is honoured)" } else { "no" });
    let hooks: Vec<&str> = [
        ("transform", info.hooks.transform),
        ("preserve", info.hooks.preserve),
        ("ignore-paths", info.hooks.ignore_paths),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    println!("hooks:   {}", hooks.join(", "));
    if info.reads.is_empty() {
        println!("reads:   the whole object");
    } else {
        println!("reads:   {}", info.reads.join(", "));
    }
    println!("kinds:");
    for k in &info.kinds {
        let group = if k.group.is_empty() { "core" } else { k.group.as_str() };
        println!("  - {} ({group})", k.kind);
    }
    if info.scope.is_empty() {
        println!("scope:   none (it only decides; it writes no field)");
    } else {
        println!("scope:");
        for s in &info.scope {
            println!("  - {s}");
        }
    }
    let concrete: Vec<_> = info.kinds.iter().filter(|k| k.group != "*" && k.kind != "*").collect();
    if !concrete.is_empty() {
        println!("ignore-paths:");
        for k in concrete {
            match plugin.ignore_paths(&k.group, &k.kind) {
                Ok(called) if called.value.is_empty() => println!("  {}: none", k.kind),
                Ok(called) => println!("  {}: {}", k.kind, called.value.join(", ")),
                Err(e) => println!("  {}: error: {e}", k.kind),
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
}
