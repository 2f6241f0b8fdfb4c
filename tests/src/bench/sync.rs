//! Sections 1–4: initial sync against the naive copier, no-op restart, update wave and peak memory, for one N.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::http;
use super::objects::{self, Kind, Workload};
use super::tracker::Tracker;
use super::{Bench, Part};

/// What one size measured; `None` where a phase did not run or failed.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Objects.
    pub n: usize,
    /// Creating the N objects upstream (the bench's own writes, for scale).
    pub upstream_create: Option<Duration>,
    /// The interleaved rounds of the initial sync (copier, downsync, copier, downsync), each
    /// against a downstream without the other's objects.
    pub pairs: Vec<Pair>,
    /// downsync: spawn to the last object correct downstream, in the last round.
    pub initial: Option<Duration>,
    /// CPU time downsync used for the initial sync (spawn to the last object correct), in the
    /// last round.
    pub initial_cpu: Option<Duration>,
    /// Downstream apiserver requests during the copy, by verb and resource.
    pub copier_requests: Option<String>,
    /// Downstream apiserver requests during downsync's initial sync.
    pub initial_requests: Option<String>,
    /// Downstream apiserver requests during the update wave.
    pub update_requests: Option<String>,
    /// downsync: spawn to /readyz 200 on the first start.
    pub initial_ready: Option<Duration>,
    /// Downstream writes during the no-op restart.
    pub resync_writes: Option<u64>,
    /// Restart (spawn) to /readyz 200.
    pub resync_ready: Option<Duration>,
    /// Peak RSS of the restarted process at /readyz: its initial lists and first compare of
    /// every object, before any steady state.
    pub rss_restart_ready: Option<u64>,
    /// `downsync_syncs_total` by operation after the restart, as text.
    pub resync_ops: Option<String>,
    /// How long the first process took to exit after SIGTERM.
    pub shutdown: Option<Duration>,
    /// Objects changed upstream in the update wave.
    pub changes: Option<usize>,
    /// Downstream writes the update wave caused.
    pub update_writes: Option<u64>,
    /// First upstream patch to the last object correct downstream.
    pub update_converge: Option<Duration>,
    /// How long the bench's own upstream patches took (the same writes, for scale).
    pub update_patch: Option<Duration>,
    /// Peak RSS (VmHWM) of the first process, holding N objects after the initial sync.
    pub rss_initial: Option<u64>,
    /// Peak RSS of the restarted process after the no-op resync and the update wave.
    pub rss_restart: Option<u64>,
    /// Resident set size of the restarted process at the end (after the peak has passed).
    pub rss_end: Option<u64>,
    /// What was live at the heap's peak of a restart, by owner (`--heap-profile`).
    pub heap: Option<super::heap::HeapProfile>,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
}

/// One round of the initial sync: the naive copier, then downsync, into the same downstream
/// state (neither's objects there when it starts).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pair {
    /// Naive copier: start to the last object correct downstream.
    pub copier: Option<Duration>,
    /// CPU time of the copier: the bench process during the copy, less the same process's
    /// CPU during downsync's initial sync (the downstream watch, which runs in both).
    pub copier_cpu: Option<Duration>,
    /// downsync: spawn to the last object correct downstream.
    pub downsync: Option<Duration>,
    /// CPU time downsync used for the initial sync (spawn to the last object correct).
    pub downsync_cpu: Option<Duration>,
}

impl Pair {
    /// downsync's time over the copier's.
    pub fn ratio(&self) -> Option<f64> {
        match (self.downsync, self.copier) {
            (Some(d), Some(c)) if !c.is_zero() => Some(d.as_secs_f64() / c.as_secs_f64()),
            _ => None,
        }
    }

    /// downsync's CPU over the copier's.
    pub fn cpu_ratio(&self) -> Option<f64> {
        match (self.downsync_cpu, self.copier_cpu) {
            (Some(d), Some(c)) if !c.is_zero() => Some(d.as_secs_f64() / c.as_secs_f64()),
            _ => None,
        }
    }
}

/// Interleaved rounds of the initial sync (copier, downsync) per size.
pub const ROUNDS: usize = 2;

impl Figures {
    /// The worst (largest) of the rounds' ratios of downsync's time over the copier's.
    pub fn worst_ratio(&self) -> Option<f64> {
        self.pairs.iter().filter_map(Pair::ratio).reduce(f64::max)
    }

    /// The worst of the rounds' CPU ratios.
    pub fn worst_cpu_ratio(&self) -> Option<f64> {
        self.pairs.iter().filter_map(Pair::cpu_ratio).reduce(f64::max)
    }
}

fn copy_ns(ns: &str) -> String {
    ns.replacen("bench-", "benchcp-", 1)
}

/// The `downsync run` flags for the bench's clusters, kinds, namespaces and plugins.
pub fn run_args(b: &Bench, kinds: &[Kind], namespaces: &[String], plugins: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut flag = |k: &str, v: &str| {
        a.push(k.to_string());
        a.push(v.to_string());
    };
    flag("--upstream-kubeconfig", &b.clusters.upstream.kubeconfig.display().to_string());
    if let Some(c) = &b.clusters.upstream.context {
        flag("--upstream-context", c);
    }
    flag("--downstream-kubeconfig", &b.clusters.downstream.kubeconfig.display().to_string());
    if let Some(c) = &b.clusters.downstream.context {
        flag("--downstream-context", c);
    }
    for k in kinds {
        flag("--resource", k.resource_flag());
    }
    for ns in namespaces {
        flag("--namespace", ns);
    }
    flag("--workers", &b.opts.workers.to_string());
    if let Some(dir) = plugins {
        flag("--plugins-dir", &dir.display().to_string());
    }
    a
}

fn sync_timeout(n: usize) -> Duration {
    Duration::from_secs(180) + Duration::from_millis(60) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// Runs sections 1–4 (those selected) for `n` objects.
pub async fn measure(b: &Bench, n: usize) -> Figures {
    let mut f = Figures { n, ..Figures::default() };
    let run = super::run_id();
    let w = Workload::new("bench", &run, b.opts.namespaces, n);
    let copies: Vec<String> = w.namespaces.iter().map(|ns| copy_ns(ns)).collect();
    if let Err(e) = phases(b, &w, &mut f).await {
        eprintln!("bench: N={n}: {e:#}");
        f.errors.push(format!("{e:#}"));
    }
    eprintln!("bench: N={n}: cleaning up the run's namespaces");
    let all: Vec<String> = w.namespaces.iter().cloned().chain(copies).collect();
    for (side, client) in [("upstream", &b.up), ("downstream", &b.down)] {
        if let Err(e) = objects::delete_namespaces(client, &all, Duration::from_secs(900)).await {
            f.errors.push(format!("cleanup {side}: {e:#}"));
        }
    }
    f
}

async fn phases(b: &Bench, w: &Workload, f: &mut Figures) -> Result<()> {
    let (up, down, n) = (&b.up, &b.down, w.n);
    let workers = b.opts.workers;
    eprintln!("bench: N={n}: creating the objects upstream ({} namespaces, {workers} at a time)", w.namespaces.len());
    let t = Instant::now();
    objects::create_all(up, w, workers).await?;
    f.upstream_create = Some(t.elapsed());

    let tracker = Tracker::start(down, &Kind::ALL, &w.run, objects::fingerprint, false).await?;
    let plugins = b.sync_plugins_dir()?;
    let args = run_args(b, &Kind::ALL, &w.namespaces, plugins.as_deref());
    let rounds = if b.opts.wants(Part::Initial) { ROUNDS } else { 1 };
    for round in 0..rounds {
        let mut pair = Pair::default();
        if b.opts.wants(Part::Initial) {
            let (took, cpu, requests) = copier_run(b, w, &tracker).await?;
            (pair.copier, pair.copier_cpu) = (Some(took), cpu);
            f.copier_requests = f.copier_requests.take().or(requests);
        }
        let last = round + 1 == rounds;
        let own0 = own_cpu();
        let first = downsync_initial(b, w, f, &tracker, &args, &format!("{}-first{round}", w.run)).await?;
        pair.downsync = f.initial;
        pair.downsync_cpu = f.initial_cpu;
        let watch_cpu = own_cpu().zip(own0).map(|(a, b)| a.saturating_sub(b));
        pair.copier_cpu = pair.copier_cpu.zip(watch_cpu).map(|(c, w)| c.saturating_sub(w));
        if let Some(r) = pair.ratio() {
            eprintln!("bench:   round {}: downsync / copier {r:.2}x", round + 1);
        }
        f.pairs.push(pair);
        // Let late writes (status, retries) land before the restart is judged.
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.rss_initial = first.peak_rss().ok().max(f.rss_initial);
        let (status, took) = first.stop(Duration::from_secs(60)).await?;
        f.shutdown = Some(took);
        if !status.success() {
            f.errors.push(format!("the first downsync exited with {status} after SIGTERM"));
        }
        if !last {
            // The next copier starts from the downstream this one did: without downsync's copies.
            eprintln!("bench: N={n}: deleting downsync's copies for the next round");
            objects::delete_namespaces(down, &w.namespaces, Duration::from_secs(900)).await?;
        }
    }
    if !(b.opts.wants(Part::Resync) || b.opts.wants(Part::Update) || b.opts.wants(Part::Memory)) {
        return Ok(());
    }

    eprintln!("bench: N={n}: restart over the synced objects (no-op resync)");
    let before = tracker.writes();
    let mut second = b.spawn(&args, &format!("{}-restart", w.run))?;
    let ready = second.wait_ready(sync_timeout(n)).await?;
    f.resync_ready = Some(ready.saturating_duration_since(second.started));
    f.rss_restart_ready = second.peak_rss().ok();
    quiet(&tracker, Duration::from_secs(3), Duration::from_secs(60)).await;
    second.check_alive()?;
    f.resync_writes = Some(tracker.writes() - before);
    if let Ok(m) = second.metrics().await {
        let ops = ["created", "updated", "recreated", "unchanged", "skipped"]
            .iter()
            .map(|op| format!("{op} {}", m.sum("downsync_syncs_total", &[("operation", op)])))
            .collect::<Vec<_>>()
            .join(", ");
        f.resync_ops = Some(ops);
    }
    eprintln!("bench:   ready after {:.2?}, {} downstream writes", ready - second.started, tracker.writes() - before);

    if b.opts.wants(Part::Update) {
        eprintln!("bench: N={n}: update wave (10% of the objects)");
        let changed = |i: usize| i.is_multiple_of(10);
        tracker.expect(w.expected(|ns| ns.to_string(), changed, 1));
        let before = tracker.writes();
        let req0 = http::apiserver_requests(down).await.ok();
        let t0 = Instant::now();
        let count = objects::patch_some(up, w, changed, 1, workers).await?;
        f.update_patch = Some(t0.elapsed());
        f.changes = Some(count);
        let done = tracker.wait_done(sync_timeout(count), || second.check_alive()).await?;
        f.update_converge = Some(done.saturating_duration_since(t0));
        quiet(&tracker, Duration::from_secs(3), Duration::from_secs(60)).await;
        f.update_writes = Some(tracker.writes() - before);
        f.update_requests = requests_since(down, req0).await;
        eprintln!("bench:   {count} changes converged in {:.2?}, {} writes", done - t0, tracker.writes() - before);
    }
    f.rss_restart = second.peak_rss().ok();
    f.rss_end = second.rss().ok();
    let (status, _) = second.stop(Duration::from_secs(60)).await?;
    if !status.success() {
        f.errors.push(format!("the restarted downsync exited with {status} after SIGTERM"));
    }
    if b.opts.heap_profile && Some(n) == b.opts.sizes.iter().max().copied() {
        eprintln!("bench: N={n}: heap profile of a restart (heaptrack)");
        match super::heap::profile(b, &args, &format!("{}-heap", w.run), Duration::from_secs(5)).await {
            Ok(h) => f.heap = Some(h),
            Err(e) => f.errors.push(format!("heap profile: {e:#}")),
        }
    }
    Ok(())
}

/// Starts downsync over an empty downstream and waits for the last object correct and for
/// /readyz; records the times, CPU and requests in `f`. Returns the running process.
async fn downsync_initial(
    b: &Bench,
    w: &Workload,
    f: &mut Figures,
    tracker: &Tracker,
    args: &[String],
    name: &str,
) -> Result<super::process::Downsync> {
    let (down, n) = (&b.down, w.n);
    eprintln!("bench: N={n}: downsync run, initial sync");
    tracker.expect(w.expected(|ns| ns.to_string(), |_| false, 0));
    let req0 = http::apiserver_requests(down).await.ok();
    let mut first = b.spawn(args, name)?;
    let done = tracker.wait_done(sync_timeout(n), || first.check_alive()).await?;
    f.initial_requests = requests_since(down, req0).await;
    f.initial = Some(done.saturating_duration_since(first.started));
    f.initial_cpu = first.cpu_time().ok();
    let ready = first.wait_ready(sync_timeout(n)).await?;
    f.initial_ready = Some(ready.saturating_duration_since(first.started));
    eprintln!(
        "bench:   correct downstream after {:.2?}, ready after {:.2?}",
        done - first.started,
        ready - first.started
    );
    Ok(first)
}

/// One naive copy into the copy namespaces, timed by the tracker, then the copies deleted.
/// Returns the time, the bench process's CPU time and the downstream requests during the copy.
async fn copier_run(
    b: &Bench,
    w: &Workload,
    tracker: &Tracker,
) -> Result<(Duration, Option<Duration>, Option<String>)> {
    let (up, down, n) = (&b.up, &b.down, w.n);
    eprintln!("bench: N={n}: naive copier");
    tracker.expect(w.expected(copy_ns, |_| false, 0));
    let cpu0 = own_cpu();
    let req0 = http::apiserver_requests(down).await.ok();
    let t0 = Instant::now();
    let copied = super::copier::copy(up, down, &w.namespaces, &w.run, copy_ns, b.opts.workers).await?;
    let done = tracker.wait_done(sync_timeout(n), || Ok(())).await?;
    let requests = requests_since(down, req0).await;
    let cpu = own_cpu().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
    eprintln!("bench:   copied {copied} objects in {:.2?}; deleting the copies", done - t0);
    let copies: Vec<String> = w.namespaces.iter().map(|ns| copy_ns(ns)).collect();
    objects::delete_namespaces(down, &copies, Duration::from_secs(900)).await?;
    Ok((done.saturating_duration_since(t0), cpu, requests))
}

/// The downstream requests since `before`, as text.
async fn requests_since(
    down: &kube::Client,
    before: Option<std::collections::BTreeMap<(String, String), f64>>,
) -> Option<String> {
    let after = http::apiserver_requests(down).await.ok()?;
    Some(http::request_delta(&before?, &after))
}

/// CPU time of this process so far.
fn own_cpu() -> Option<Duration> {
    super::process::cpu_time(std::process::id()).ok()
}

/// Waits until no write arrived for `quiet`, at most `max`.
async fn quiet(tracker: &Tracker, quiet: Duration, max: Duration) {
    let started = Instant::now();
    let (mut last, mut since) = (tracker.writes(), Instant::now());
    while started.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tracker.writes();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}
