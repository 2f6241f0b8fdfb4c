//! downsync-bench: measures downsync against the API server's own limit and its WASM rules against native Rust (issue 6).
//!
//! The binary `downsync-bench` parses [`Options`] and calls [`run`]. Sections 5 and 7 run in
//! this process on the built plugin components; sections 1–4 and 6 start two control planes
//! (or use `DOWNSYNC_UPSTREAM_KUBECONFIG` / `DOWNSYNC_DOWNSTREAM_KUBECONFIG`) and drive the
//! `downsync` binary. Every section's figures land in one [`report::Report`], printed as
//! markdown and written to `--out` after each section, so a failure late in the run keeps
//! what was measured.

pub mod coexist;
pub mod coldstart;
pub mod copier;
pub mod deadline;
pub mod ha;
pub mod heap;
pub mod http;
pub mod kcp;
pub mod languages;
pub mod objects;
pub mod oci;
pub mod process;
pub mod reload;
pub mod report;
pub mod rules;
pub mod svg;
pub mod sync;
pub mod timing;
pub mod tracker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use downsync::plugin::{EngineConfig, Plugin, PluginEngine};
use kube::Client;

use crate::{ClusterRef, Clusters, repo_root};
use report::{Report, Section};
use timing::{ratio, secs};

/// The measurements of issue 6, by name (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// 1. Initial sync, downsync against the naive copier.
    Initial,
    /// 2. No-op restart.
    Resync,
    /// 3. Update wave.
    Update,
    /// 4. Peak memory.
    Memory,
    /// 5. Rule cost.
    Rules,
    /// 6. Hot reload under load.
    Reload,
    /// 7. Cold start of 10 plugins.
    Coldstart,
    /// 8. High availability: failover, graceful handover, sharded initial sync.
    Ha,
    /// 9. The hpa-replicas rule in Rust, Python and JavaScript.
    Languages,
    /// 10. A plugin burning its deadline: `/healthz` and another kind's latency.
    Deadline,
    /// 11. Coexistence: an HPA and an admission policy share the downstream (issue 28).
    Coexist,
    /// 13. kcp: many workspaces through one APIExport virtual workspace (issue 31).
    Kcp,
    /// 14. Plugins from an OCI registry: push to active, the cost of verification (issue 30).
    Oci,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Object counts for sections 1–4.
    pub sizes: Vec<usize>,
    /// Where the markdown report goes.
    pub out: PathBuf,
    /// The `downsync` binary; built in release mode when not given.
    pub downsync: Option<PathBuf>,
    /// The sections to run; all when empty.
    pub only: Vec<Part>,
    /// downsync `--workers`, and the copier's and the bench's own write concurrency.
    pub workers: usize,
    /// Upstream namespaces the objects are spread over.
    pub namespaces: usize,
    /// Run downsync with the 4 built-in plugins in its plugins folder (sections 1–4).
    pub builtin_plugins: bool,
    /// Objects in flight during the hot-reload swaps.
    pub reload_objects: usize,
    /// Plugin swaps.
    pub swaps: usize,
    /// Upstream updates per second during the swaps.
    pub churn: f64,
    /// Holders killed (and as many stopped with SIGTERM) in section 8.
    pub ha_kills: usize,
    /// Objects of section 8's initial sync, 1 process against 3 sharded replicas.
    pub ha_objects: usize,
    /// Section 4: also profile the heap (heaptrack) of a restart at the largest size.
    pub heap_profile: bool,
    /// Section 11: Deployments.
    pub coexist_objects: usize,
    /// Section 11: an earlier `downsync` binary to compare against.
    pub baseline: Option<PathBuf>,
    /// Section 13: workspaces, and ConfigMaps in each.
    pub kcp_workspaces: (usize, usize),
}

impl Options {
    /// Whether a section is selected.
    pub fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    fn wants_clusters(&self) -> bool {
        [
            Part::Initial,
            Part::Resync,
            Part::Update,
            Part::Memory,
            Part::Reload,
            Part::Ha,
            Part::Deadline,
            Part::Coexist,
            Part::Kcp,
            Part::Oci,
        ]
        .iter()
        .any(|p| self.wants(*p))
    }
}

/// What the cluster sections share: options, clusters, clients, binaries and a scratch folder.
pub struct Bench {
    /// The options.
    pub opts: Options,
    /// Both clusters.
    pub clusters: Clusters,
    /// Upstream client.
    pub up: Client,
    /// Downstream client.
    pub down: Client,
    /// The `downsync` binary.
    pub downsync: PathBuf,
    /// The folder of built plugin components.
    pub plugins: PathBuf,
    /// Scratch folder: logs, plugins folders.
    pub work: PathBuf,
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("opts", &self.opts)
            .field("clusters", &self.clusters)
            .field("downsync", &self.downsync)
            .finish_non_exhaustive()
    }
}

impl Bench {
    /// Copies the 4 built-in components into `dir` as `<name>.wasm`.
    pub fn install_builtins(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, file) in
            ["service", "persistent-volume", "immutable-config", "service-account"].into_iter().zip(coldstart::BUILTINS)
        {
            std::fs::copy(self.plugins.join(file), dir.join(format!("{name}.wasm")))
                .with_context(|| format!("installing {file}"))?;
        }
        Ok(())
    }

    /// The `XDG_CACHE_HOME` of the downsync processes: their compiled-plugin cache.
    pub fn cache_home(&self) -> PathBuf {
        self.work.join("xdg-cache")
    }

    /// Starts `downsync run ARGS`, logging to `downsync-NAME.log` in the scratch folder.
    pub fn spawn(&self, args: &[String], name: &str) -> Result<process::Downsync> {
        self.spawn_replica(args, name, None)
    }

    /// [`Bench::spawn`] as HA replica `replica` (a Deployment's `POD_NAME`), with its Leases in
    /// `default` (`POD_NAMESPACE`).
    pub fn spawn_replica(&self, args: &[String], name: &str, replica: Option<&str>) -> Result<process::Downsync> {
        let env: Vec<(String, String)> = replica
            .map(|r| vec![("POD_NAME".into(), r.into()), ("POD_NAMESPACE".into(), "default".into())])
            .unwrap_or_default();
        self.spawn_with_env(args, name, &env)
    }

    /// [`Bench::spawn`] with more environment variables.
    pub fn spawn_with_env(&self, args: &[String], name: &str, env: &[(String, String)]) -> Result<process::Downsync> {
        process::Downsync::spawn_with_env(
            &self.downsync,
            args,
            &self.work.join(format!("downsync-{name}.log")),
            &self.cache_home(),
            env,
        )
    }

    /// Compiles the built-ins into the downsync processes' artifact cache, so the sync sections
    /// time syncing, not a first compile (section 7 times that).
    pub fn warm_cache(&self) -> Result<()> {
        let cache_dir = self.cache_home().join("downsync").join("components");
        // Not tiered: Cranelift's artifacts are written before this returns.
        let engine = PluginEngine::new(EngineConfig {
            cache_dir: Some(cache_dir),
            tiered_compilation: false,
            ..EngineConfig::default()
        })?;
        for file in coldstart::BUILTINS {
            Plugin::load_file(&engine, &self.plugins.join(file))?;
        }
        Ok(())
    }

    /// The plugins folder for sections 1–4, if plugins are on.
    pub fn sync_plugins_dir(&self) -> Result<Option<PathBuf>> {
        if !self.opts.builtin_plugins {
            return Ok(None);
        }
        let dir = self.work.join(format!("plugins-{}", run_id()));
        self.install_builtins(&dir)?;
        Ok(Some(dir))
    }
}

/// A short random id, for namespaces and files of one run.
pub fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Control planes this process started, stopped on drop.
struct Started(Vec<String>);

impl Drop for Started {
    fn drop(&mut self) {
        let script = repo_root().join("tests/cluster/controlplane.sh");
        for name in &self.0 {
            let _ = Command::new("bash").arg(&script).args(["down", name]).status();
        }
    }
}

fn start_control_plane(name: &str) -> Result<PathBuf> {
    let script = repo_root().join("tests/cluster/controlplane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["up", name, "--owner-pid", &std::process::id().to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("starting control plane {name} failed (see the output above)");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().map(PathBuf::from).context("controlplane.sh printed no kubeconfig")
}

fn clusters(started: &mut Started) -> Result<Clusters> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    if let (Some(up), Some(down)) = (env("DOWNSYNC_UPSTREAM_KUBECONFIG"), env("DOWNSYNC_DOWNSTREAM_KUBECONFIG")) {
        return Ok(Clusters {
            upstream: ClusterRef { kubeconfig: up, context: std::env::var("DOWNSYNC_UPSTREAM_CONTEXT").ok() },
            downstream: ClusterRef { kubeconfig: down, context: std::env::var("DOWNSYNC_DOWNSTREAM_CONTEXT").ok() },
        });
    }
    let pid = std::process::id();
    let mut side = |s: &str| {
        let name = format!("bench-{s}-{pid}");
        let kubeconfig = start_control_plane(&name)?;
        started.0.push(name);
        anyhow::Ok(ClusterRef { kubeconfig, context: None })
    };
    Ok(Clusters { upstream: side("up")?, downstream: side("down")? })
}

fn cargo_build(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new("nice")
        .args(["-n", "10", &cargo, "build", "--quiet"])
        .args(args)
        .current_dir(repo_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build {} failed", args.join(" "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// The `downsync` binary: the given one, or `$CARGO_TARGET_DIR/release/downsync`, built first.
pub fn locate_downsync(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--downsync {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    eprintln!("bench: building downsync (release)");
    cargo_build(&["--release", "-p", "downsync", "--bin", "downsync"])?;
    Ok(target_dir().join("release").join("downsync"))
}

fn save(report: &Report, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut r = report.clone();
    r.sections.sort_by_key(|s| s.number);
    std::fs::write(out, r.markdown()).with_context(|| format!("writing {}", out.display()))
}

/// Runs the selected sections and writes the report; returns it.
pub async fn run(opts: Options) -> Result<Report> {
    let repo = repo_root();
    let out = if opts.out.is_absolute() { opts.out.clone() } else { std::env::current_dir()?.join(&opts.out) };
    let mut report = Report { env: report::Environment::detect(&repo), sections: Vec::new() };
    let work = std::env::temp_dir().join(format!("downsync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    eprintln!("bench: scratch folder {}", work.display());

    let needs_plugins =
        opts.wants(Part::Rules) || opts.wants(Part::Coldstart) || opts.wants(Part::Languages) || opts.wants_clusters();
    let plugins = if needs_plugins {
        eprintln!("bench: building the plugin components");
        crate::plugins::built_plugins_dir()?
    } else {
        PathBuf::new()
    };

    if opts.wants(Part::Rules) {
        eprintln!("bench: 5. rule cost");
        let costs = tokio::task::block_in_place(|| rules::measure(&plugins, &repo, 15, Duration::from_millis(40)))?;
        report.sections.push(rules::section(&costs));
        save(&report, &out)?;
    }
    if opts.wants(Part::Coldstart) {
        eprintln!("bench: 7. cold start");
        let rounds = 3;
        let c = tokio::task::block_in_place(|| coldstart::measure(&plugins, &work, rounds))?;
        report.sections.push(coldstart::section(&c, rounds));
        save(&report, &out)?;
    }
    if opts.wants(Part::Languages) {
        eprintln!("bench: 9. plugins in other languages (installs and builds with tests/guest-toolchains.sh)");
        let guest = crate::plugins::guest_tools()?.build_dir;
        let figures = tokio::task::block_in_place(|| languages::measure(&plugins, &guest, &work))?;
        report.sections.push(languages::section(&figures));
        save(&report, &out)?;
    }
    if !opts.wants_clusters() {
        return finish(report, &out);
    }

    let downsync = locate_downsync(opts.downsync.as_deref())?;
    let mut started = Started(Vec::new());
    eprintln!("bench: starting the control planes");
    let clusters = clusters(&mut started)?;
    let up = clusters.upstream.client().await?;
    let down = clusters.downstream.client().await?;
    report.env.kubernetes = match down.apiserver_version().await {
        Ok(v) => v.git_version,
        Err(e) => format!("unknown ({e})"),
    };
    let bench = Bench { opts: opts.clone(), clusters, up, down, downsync, plugins, work };
    tokio::task::block_in_place(|| bench.warm_cache())?;

    if [Part::Initial, Part::Resync, Part::Update, Part::Memory].iter().any(|p| opts.wants(*p)) {
        let mut figures = Vec::new();
        for &n in &opts.sizes {
            figures.push(sync::measure(&bench, n).await);
            report.sections.retain(|s| s.number > 4);
            report.sections.extend(sync_sections(&opts, &figures));
            save(&report, &out)?;
        }
    }
    if opts.wants(Part::Reload) {
        eprintln!("bench: 6. hot reload");
        let section = match reload::measure(&bench, opts.reload_objects, opts.swaps, opts.churn).await {
            Ok(r) => reload::section(&r),
            Err(e) => {
                let mut s = Section::new(6, "Hot reload under load", &["error"]);
                s.row(vec![format!("{e:#}").replace('\n', " ")]);
                s.issue_goal(3, "hot reload p99 ≤ 250 ms, including compilation", None, "failed to run".into());
                s
            }
        };
        report.sections.push(section);
        save(&report, &out)?;
    }
    if opts.wants(Part::Ha) {
        eprintln!("bench: 8. high availability");
        let figures = ha::measure(&bench, opts.ha_kills, opts.ha_objects).await;
        report.sections.push(ha::section(&figures));
        save(&report, &out)?;
    }
    if opts.wants(Part::Deadline) {
        eprintln!("bench: 10. a plugin burning its deadline");
        let figures = deadline::measure(&bench).await;
        report.sections.push(deadline::section(&figures));
        save(&report, &out)?;
    }
    if opts.wants(Part::Coexist) {
        eprintln!("bench: 11. coexistence");
        let figures = coexist::measure(&bench, opts.coexist_objects, opts.baseline.as_deref()).await;
        report.sections.push(coexist::section(&figures));
        save(&report, &out)?;
    }
    if opts.wants(Part::Kcp) {
        eprintln!("bench: 13. kcp (starts a kcp unless DOWNSYNC_KCP_KUBECONFIG is set)");
        let (workspaces, per) = opts.kcp_workspaces;
        let figures = kcp::measure(&bench, workspaces, per, 3).await;
        report.sections.push(kcp::section(&figures));
        save(&report, &out)?;
    }
    if opts.wants(Part::Oci) {
        eprintln!("bench: 14. plugins from an OCI registry (starts a registry)");
        let figures = oci::measure(&bench, 10).await;
        report.sections.push(oci::section(&figures));
        save(&report, &out)?;
    }
    drop(started);
    finish(report, &out)
}

fn finish(mut report: Report, out: &Path) -> Result<Report> {
    report.sections.sort_by_key(|s| s.number);
    save(&report, out)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(report)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "—".to_string(), f)
}

/// Sections 1–4 from the figures of every size run so far.
pub fn sync_sections(opts: &Options, figures: &[sync::Figures]) -> Vec<Section> {
    let largest = figures.iter().max_by_key(|f| f.n);
    let at = |f: &sync::Figures| {
        if f.n >= 10_000 { format!("at N={}", f.n) } else { format!("at N={} (10,000 not run)", f.n) }
    };
    let mut out = Vec::new();

    if opts.wants(Part::Initial) {
        let mut s = Section::new(
            1,
            "Initial sync",
            &[
                "N",
                "bench creates upstream",
                "round",
                "naive copier",
                "downsync run",
                "downsync / copier",
                "downsync /readyz",
                "CPU: copier",
                "CPU: downsync",
                "CPU: downsync / copier",
            ],
        );
        for f in figures {
            for (i, p) in f.pairs.iter().enumerate() {
                s.row(vec![
                    f.n.to_string(),
                    if i == 0 { opt(f.upstream_create, secs) } else { String::new() },
                    (i + 1).to_string(),
                    opt(p.copier, secs),
                    opt(p.downsync, secs),
                    opt(p.ratio(), |r| format!("{r:.2}×")),
                    if i + 1 == f.pairs.len() { opt(f.initial_ready, secs) } else { String::new() },
                    opt(p.copier_cpu, secs),
                    opt(p.downsync_cpu, secs),
                    opt(p.cpu_ratio(), |r| format!("{r:.2}×")),
                ]);
            }
        }
        if let Some(f) = figures.iter().find(|f| f.n == 10_000).or(largest) {
            let r = f.worst_ratio();
            s.issue_goal(
                1,
                "initial sync of 10,000 objects ≤ 1.05× the naive copier",
                r.map(|r| r <= 1.05),
                r.map_or_else(|| "not measured".into(), |r| format!("worst pair {r:.2}× {}", at(f))),
            );
        }
        for f in figures.iter().filter(|f| f.n == 10_000 || f.n == 100_000) {
            let r = f.worst_ratio();
            s.goal(
                &format!("issue 32: initial sync ≤ 1.0× the copier, each interleaved pair, at N={}", f.n),
                r.map(|r| r <= 1.0),
                r.map_or_else(|| "not measured".into(), |r| format!("worst pair {r:.2}×")),
            );
        }
        if let Some(f) = largest {
            let r = f.worst_cpu_ratio();
            s.goal(
                "issue 32: downsync CPU ≤ 1.5× the copier's",
                r.map(|r| r <= 1.5),
                r.map_or_else(|| "not measured".into(), |r| format!("worst pair {r:.2}× {}", at(f))),
            );
        }
        s.note(format!(
            "ConfigMap/Service(ClusterIP)/Deployment mix over {} namespaces. Both copy the same N objects with \
             {} writers, each timed from start (process spawn for downsync) to the moment a downstream watch \
             sees the last object correct (data/spec equal to upstream). The copier lists upstream, strips \
             metadata and creates into namespaces of its own; downsync copies into the upstream names. They run \
             interleaved, copier then downsync, {} rounds, and each starts from the same downstream: the \
             copier's copies are deleted before downsync runs and downsync's before the next copier, so neither \
             writes next to the other's N live objects. Each round's ratio is printed; the goal takes the worst. \
             downsync runs with {}. CPU is user + system time: downsync's process from spawn to the last object; \
             the copier's is the bench process during the copy less its CPU during downsync's run (the \
             downstream watch both share), so an estimate.",
            opts.namespaces,
            opts.workers,
            sync::ROUNDS,
            if opts.builtin_plugins { "the 4 built-in plugins (compiled-artifact cache warm)" } else { "no plugins" }
        ));
        for f in figures {
            if let (Some(c), Some(d)) = (&f.copier_requests, &f.initial_requests) {
                s.note(format!(
                    "Downstream apiserver requests at N={} (its `apiserver_request_total`, object kinds and \
                     namespaces; the bench's watch included): copier: {c}; downsync: {d}.",
                    f.n
                ));
            }
        }
        out.push(s);
    }
    if opts.wants(Part::Resync) {
        let mut s = Section::new(
            2,
            "No-op resync (restart over synced objects)",
            &["N", "downstream writes", "restart to /readyz", "syncs by operation", "SIGTERM to exit (first run)"],
        );
        for f in figures {
            s.row(vec![
                f.n.to_string(),
                opt(f.resync_writes, |w| w.to_string()),
                opt(f.resync_ready, secs),
                opt(f.resync_ops.clone(), |o| o),
                opt(f.shutdown, secs),
            ]);
        }
        if let Some(f) = largest {
            s.goal(
                "0 downstream writes on a no-op restart",
                f.resync_writes.map(|w| w == 0),
                opt(f.resync_writes, |w| format!("{w} {}", at(f))),
            );
        }
        for (n, limit) in [(10_000, 2.0), (100_000, 10.0)] {
            if let Some(f) = figures.iter().find(|f| f.n == n) {
                let ok = f.resync_ready.zip(f.resync_writes).map(|(r, w)| r.as_secs_f64() <= limit && w == 0);
                s.goal(
                    &format!("issue 32: restart to ready ≤ {limit:.0} s at N={n}, 0 writes"),
                    ok,
                    format!("{}, {} writes", opt(f.resync_ready, secs), opt(f.resync_writes, |w| w.to_string())),
                );
            }
        }
        s.note("Writes are counted downstream: new resourceVersions seen by a watch from before the restart until 3 s without writes after /readyz.");
        out.push(s);
    }
    if opts.wants(Part::Update) {
        let mut s = Section::new(
            3,
            "Update wave (10% of the objects change upstream)",
            &["N", "changes", "downstream writes", "converged", "bench's own upstream patches", "converged / patches"],
        );
        for f in figures {
            s.row(vec![
                f.n.to_string(),
                opt(f.changes, |c| c.to_string()),
                opt(f.update_writes, |w| w.to_string()),
                opt(f.update_converge, secs),
                opt(f.update_patch, secs),
                match (f.update_converge, f.update_patch) {
                    (Some(c), Some(p)) => ratio(c, p),
                    _ => "—".into(),
                },
            ]);
        }
        if let Some(f) = largest {
            let met = match (f.update_writes, f.changes) {
                (Some(w), Some(c)) => Some(w == c as u64),
                _ => None,
            };
            s.goal(
                "writes = changes in an update wave",
                met,
                format!(
                    "{} writes for {} changes {}",
                    opt(f.update_writes, |w| w.to_string()),
                    opt(f.changes, |c| c.to_string()),
                    at(f)
                ),
            );
        }
        for f in figures {
            if let Some(r) = &f.update_requests {
                s.note(format!("Downstream apiserver requests during the wave at N={}: {r}.", f.n));
            }
        }
        s.note("Converged: from the first upstream patch to the last changed object correct downstream. The bench's own patches (same count, same concurrency) are the upstream half of the same work.");
        out.push(s);
    }
    if opts.wants(Part::Memory) {
        let mut s = Section::new(
            4,
            "Memory (peak RSS of downsync)",
            &[
                "N",
                "first run, after the initial sync",
                "restart, peak at /readyz (lists and first compare)",
                "restart, after resync and update wave",
                "restart, RSS at the end",
                "per object (peak / N)",
                "per object added (from the size before)",
            ],
        );
        let peak = |f: &sync::Figures| f.rss_initial.into_iter().chain(f.rss_restart).max();
        let mut before: Option<(usize, u64)> = None;
        for f in figures {
            let p = peak(f);
            let added = match (before, p) {
                (Some((n0, p0)), Some(p1)) if f.n > n0 => {
                    kib((p1.saturating_sub(p0)) / u64::try_from(f.n - n0).unwrap_or(u64::MAX))
                }
                _ => "—".into(),
            };
            s.row(vec![
                f.n.to_string(),
                opt(f.rss_initial, mib),
                opt(f.rss_restart_ready, mib),
                opt(f.rss_restart, mib),
                opt(f.rss_end, mib),
                opt(p, |p| kib(p / u64::try_from(f.n.max(1)).unwrap_or(1))),
                added,
            ]);
            before = p.map(|p| (f.n, p));
        }
        // The goal is about 10,000 objects: its run when there is one, else the largest.
        if let Some(f) = figures.iter().find(|f| f.n == 10_000).or(largest) {
            let peak = f.rss_initial.into_iter().chain(f.rss_restart).max();
            s.issue_goal(
                2,
                "peak RSS ≤ 100 MiB holding 10,000 objects",
                peak.map(|p| p <= 100 << 20),
                opt(peak, |p| format!("{} {}", mib(p), at(f))),
            );
        }
        if let Some(f) = figures.iter().find(|f| f.n == 100_000) {
            let peak = f.rss_initial.into_iter().chain(f.rss_restart).max();
            s.goal("issue 32: peak RSS at 100,000 objects ≤ 350 MiB", peak.map(|p| p <= 350 << 20), opt(peak, mib));
        }
        match svg::write_plot(&opts.out, figures) {
            Ok(Some(path)) => {
                s.note(format!("Peak RSS and initial sync time against N ([{path}]({path}), written by this run):\n\n![peak RSS and initial sync against N]({path})"));
            }
            Ok(None) => {}
            Err(e) => s.note(format!("No plot: {e:#}")),
        }
        for f in figures {
            match &f.heap {
                Some(h) => {
                    let rows: Vec<Vec<String>> = h
                        .owners
                        .iter()
                        .filter(|(_, b)| *b > 0)
                        .map(|(o, b)| vec![o.clone(), mib(*b)])
                        .chain([vec!["**peak heap**".into(), format!("**{}**", mib(h.total))]])
                        .collect();
                    s.note(format!(
                        "**Heap profile** at N={} (heaptrack on a third process restarted over the synced objects; \
                         what was live at the heap's peak, charged to the first owner its stack names):\n\n{}",
                        f.n,
                        report::table(&["owner".to_string(), "peak heap".to_string()], &rows).trim_end()
                    ));
                }
                None if opts.heap_profile && Some(f.n) == opts.sizes.iter().max().copied() => {
                    s.note(format!("No heap profile at N={}: see the errors below.", f.n));
                }
                None => {}
            }
        }
        s.note(
            "Peak is `VmHWM` from `/proc/PID/status`, read just before SIGTERM; *RSS at the end* is `VmRSS` then. \
             *per object* divides the peak of both runs by N (the fixed part of the process included); *per \
             object added* is the growth of that peak from the size before, per object. *peak at /readyz* is the \
             restarted process's `VmHWM` when it turns ready: its initial lists (streaming where the API server \
             offers them) and the first compare of every object, before the update wave. Sizes are chosen with \
             `--sizes` (10,000, 50,000 and 100,000: `--sizes 10000,50000,100000`; 100,000 is for the bench only, \
             never run in CI).",
        );
        out.push(s);
    }
    for f in figures.iter().filter(|f| !f.errors.is_empty()) {
        if let Some(s) = out.first_mut() {
            s.note(format!("Errors at N={}: {}", f.n, f.errors.join("; ").replace('\n', " ")));
        }
    }
    out
}
