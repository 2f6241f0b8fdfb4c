//! Section 6: hot reload under load: time from a plugin file change to the new behaviour in downstream writes, and failed syncs.
//!
//! `downsync run` syncs `n` ConfigMaps with the built-ins and the `stamp` test plugin in its
//! plugins folder, while a churn task keeps updating the ConfigMaps upstream. Each swap writes a
//! new version of `stamp.wasm` (the same build, its marker bytes patched to a new stamp) through
//! a rename; the latency is from the rename to the first downstream write carrying the new
//! stamp. The same churn gives the plain sync latency (upstream patch to downstream write), the
//! floor under any reload latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use downsync::plugin::{EngineConfig, Plugin, PluginEngine};
use downsync_plugin_testing_stamp::{MARKER, variant};
use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Bench;
use super::objects::{self, Kind, RUN_LABEL};
use super::report::Section;
use super::sync::run_args;
use super::timing::{millis, percentile};
use super::tracker::Tracker;

/// Churn without swaps before the first swap, which gives the steady-state latencies.
const STEADY: Duration = Duration::from_secs(15);

/// How a series' new versions reach downsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Compiled by downsync on the swap.
    Cold,
    /// Compiled by the bench into downsync's artifact cache before the swap.
    Precompiled,
}

/// One series of swaps.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Whether downsync compiles the new version itself (the reload goal counts the compile).
    pub compiled: bool,
    /// What the series does differently.
    pub name: String,
    /// Per swap: file rename to the first downstream write with the new behaviour.
    pub first: Vec<Duration>,
    /// Per swap: file rename to every object written with the new behaviour.
    pub all: Vec<Duration>,
    /// Swaps whose new behaviour never showed within the timeout.
    pub missed: usize,
    /// Downstream writes per swap (median), which shows whether a swap re-syncs everything.
    pub writes_per_swap: u64,
}

/// The figures of section 6.
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// Objects in flight.
    pub objects: usize,
    /// Upstream updates per second during the swaps.
    pub churn: f64,
    /// New versions compiled by downsync on the swap; then new versions already compiled into
    /// its artifact cache (as `downsync plugin check` with the same cache would leave them).
    pub series: Vec<Series>,
    /// Upstream patch to the first downstream write carrying it, for patches sent while rules
    /// were being swapped.
    pub sync_latencies: Vec<Duration>,
    /// The same, for patches sent before the first swap (steady state).
    pub steady_latencies: Vec<Duration>,
    /// Of `sync_latencies`: patches sent while a new version was being loaded (from the rename
    /// to its first write), while the objects were being re-synced to it (from its first write
    /// until every object carried it), and in between swaps.
    pub phase_latencies: [Vec<Duration>; 3],
    /// Of `sync_latencies`: the patches sent during each series (same order as `series`).
    pub series_latencies: Vec<Vec<Duration>>,
    /// `downsync_syncs_total{result="error"}` during the swaps.
    pub failed_syncs: f64,
    /// `downsync_plugin_reload_failures_total` during the swaps.
    pub reload_failures: f64,
    /// Writes with an older stamp after the new one first showed (calls in flight finishing
    /// on the version they started with).
    pub late_old_writes: usize,
}

/// `base` with every occurrence of `from` replaced by `to` (same length).
pub fn patch_bytes(base: &[u8], from: &[u8], to: &[u8]) -> Result<Vec<u8>> {
    if from.len() != to.len() || from.is_empty() {
        bail!("the replacement must have the marker's length");
    }
    let mut out = base.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    if found == 0 {
        bail!("the marker is not in the component");
    }
    Ok(out)
}

fn stamp_and_tick(obj: &Value) -> Value {
    json!({
        "stamp": obj.pointer("/metadata/annotations/bench.downsync.dev~1stamp"),
        "tick": obj.pointer("/data/tick"),
    })
}

fn config_map(ns: &str, run: &str, i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("cm-{i:05}"), "namespace": ns, "labels": {RUN_LABEL: run}},
        "data": {"index": i.to_string(), "tick": "0"},
    })
}

/// Keeps patching the ConfigMaps upstream at `rate` per second until `stop`; records when each
/// tick was sent.
async fn churn(
    client: Client,
    ns: String,
    n: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
) {
    let api = objects::api(&client, Kind::ConfigMap, Some(&ns));
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut next = tokio::time::Instant::now();
    let mut tick: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        next += period;
        tokio::time::sleep_until(next).await;
        let name = format!("cm-{:05}", tick as usize % n.max(1));
        sent.lock().unwrap_or_else(PoisonError::into_inner).insert(tick, Instant::now());
        let patch = Patch::Merge(json!({"data": {"tick": tick.to_string()}}));
        if let Err(e) = api.patch(&name, &PatchParams::default(), &patch).await {
            eprintln!("bench: churn patch of {name} failed: {e}");
        }
        tick += 1;
    }
}

/// Runs section 6 with `n` ConfigMaps and `swaps` swaps.
pub async fn measure(b: &Bench, n: usize, swaps: usize, rate: f64) -> Result<Reload> {
    let run = super::run_id();
    let ns = format!("reload-{run}");
    let result = swap_under_load(b, &run, &ns, n, swaps, rate).await;
    for client in [&b.up, &b.down] {
        if let Err(e) = objects::delete_namespaces(client, std::slice::from_ref(&ns), Duration::from_secs(600)).await {
            eprintln!("bench: cleanup of {ns}: {e:#}");
        }
    }
    result
}

async fn swap_under_load(b: &Bench, run: &str, ns: &str, n: usize, swaps: usize, rate: f64) -> Result<Reload> {
    let mut r = Reload { objects: n, churn: rate, ..Reload::default() };
    eprintln!("bench: hot reload: {n} ConfigMaps, {swaps} swaps, churn {rate}/s");
    objects::create_namespaces(&b.up, &[ns.to_string()], run).await?;
    stream::iter(0..n)
        .map(|i| async move {
            let obj: DynamicObject = serde_json::from_value(config_map(ns, run, i))?;
            objects::api(&b.up, Kind::ConfigMap, Some(ns)).create(&PostParams::default(), &obj).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(b.opts.workers)
        .try_collect::<Vec<()>>()
        .await?;

    let dir = b.work.join(format!("reload-{run}"));
    b.install_builtins(&dir)?;
    let base = std::fs::read(b.plugins.join("downsync_plugin_testing_stamp.wasm")).context("the stamp plugin")?;
    let stamp_file = dir.join("stamp.wasm");
    std::fs::write(&stamp_file, patch_bytes(&base, MARKER.as_bytes(), variant(1).as_bytes())?)?;

    let tracker = Tracker::start(&b.down, &[Kind::ConfigMap], run, stamp_and_tick, true).await?;
    let args = run_args(b, &[Kind::ConfigMap], &[ns.to_string()], Some(&dir));
    let mut ds = b.spawn(&args, &format!("{run}-reload"))?;
    let expected = (0..n)
        .map(|i| ((Kind::ConfigMap, ns.to_string(), format!("cm-{i:05}")), json!({"stamp": variant(1), "tick": "0"})))
        .collect();
    tracker.expect(expected);
    tracker.wait_done(Duration::from_secs(300), || ds.check_alive()).await?;
    ds.wait_ready(Duration::from_secs(60)).await?;

    // The bench's engine has downsync's configuration, so what it compiles into downsync's
    // cache directory is what downsync would have compiled; not tiered, so that the artifact
    // is written at once. The precompiled series' versions are compiled here, before the
    // churn, so that the bench's own compiles do not compete with downsync while the change
    // latencies are measured.
    let cache_dir = b.cache_home().join("downsync").join("components");
    let engine = PluginEngine::new(EngineConfig {
        cache_dir: Some(cache_dir),
        tiered_compilation: false,
        ..EngineConfig::default()
    })?;
    let ways = [Way::Cold, Way::Precompiled];
    // Version 1 is in place before the swaps; series k swaps in the next `swaps` versions.
    let versions = |k: usize| (2 + (k * swaps) as u64)..(2 + ((k + 1) * swaps) as u64);
    let precompiled_series = ways.iter().position(|w| *w == Way::Precompiled).unwrap_or(ways.len());
    for version in versions(precompiled_series) {
        let bytes = patch_bytes(&base, MARKER.as_bytes(), variant(version).as_bytes())?;
        tokio::task::block_in_place(|| Plugin::load(&engine, "stamp", &bytes).map(drop).map_err(anyhow::Error::from))?;
    }
    drop(engine);

    let m0 = ds.metrics().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let churner = tokio::spawn(churn(b.up.clone(), ns.to_string(), n, rate, stop.clone(), sent.clone()));
    let started = Instant::now();
    // Steady state first: enough churn without swaps for its own p99 (750 patches at 50/s: the
    // p99 of 400, as before, was 12 to 19 ms from run to run).
    tokio::time::sleep(STEADY).await;
    let swaps_started = Instant::now();

    // Per swap: the rename, the first write of the new version, the last object's.
    let mut windows: Vec<(Instant, Option<Instant>, Option<Instant>)> = Vec::new();
    // When each series started.
    let mut series_started = Vec::new();
    for (k, way) in ways.into_iter().enumerate() {
        let precompiled = way == Way::Precompiled;
        series_started.push(Instant::now());
        let name = match way {
            Way::Cold => "compiled on the swap, nothing cached",
            Way::Precompiled => "precompiled into the artifact cache",
        };
        let mut series = Series { name: name.into(), compiled: !precompiled, ..Series::default() };
        let mut writes = Vec::new();
        for (s, version) in versions(k).enumerate() {
            let stamp = variant(version);
            let old: Vec<String> = (1..version).map(variant).collect();
            let bytes = patch_bytes(&base, MARKER.as_bytes(), stamp.as_bytes())?;
            let tmp = dir.join(".stamp.wasm.tmp");
            std::fs::write(&tmp, bytes)?;
            let w0 = tracker.writes();
            let t0 = Instant::now();
            std::fs::rename(&tmp, &stamp_file)?;
            let has_new = |fp: &Value| fp["stamp"].as_str() == Some(stamp.as_str());
            let deadline = t0 + Duration::from_secs(30);
            let first = loop {
                ds.check_alive()?;
                if let Some(at) = tracker.first_since(t0, has_new) {
                    break Some(at);
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            match first {
                Some(at) => series.first.push(at - t0),
                None => series.missed += 1,
            }
            // downsync re-syncs every object when the rules change: wait for all of them.
            let all = loop {
                ds.check_alive()?;
                if tracker.count_live(has_new) >= n {
                    break Some(Instant::now());
                }
                if Instant::now() > t0 + Duration::from_secs(120) {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if let Some(at) = all {
                series.all.push(at - t0);
            }
            windows.push((t0, first, all));
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(at) = first {
                r.late_old_writes +=
                    tracker.count_since(at, |fp| fp["stamp"].as_str().is_some_and(|v| old.iter().any(|o| o == v)));
            }
            writes.push(tracker.writes() - w0);
            eprintln!(
                "bench:   swap {}/{swaps} ({name}): first {}, all {}",
                s + 1,
                first.map_or_else(|| "not seen within 30 s".to_string(), |at| format!("{:.1?}", at - t0)),
                all.map_or_else(|| "not within 120 s".to_string(), |at| format!("{:.1?}", at - t0))
            );
        }
        writes.sort_unstable();
        series.writes_per_swap = writes.get(writes.len().saturating_sub(1) / 2).copied().unwrap_or(0);
        r.series.push(series);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = churner.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m1 = ds.metrics().await?;
    r.failed_syncs =
        m1.sum("downsync_syncs_total", &[("result", "error")]) - m0.sum("downsync_syncs_total", &[("result", "error")]);
    r.reload_failures =
        m1.sum("downsync_plugin_reload_failures_total", &[]) - m0.sum("downsync_plugin_reload_failures_total", &[]);
    let sent = sent.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // Only the first write carrying a tick is its sync: later writes of the same object (a rule
    // swap re-syncing it) carry the same tick and say nothing about how fast the change came.
    let mut seen = std::collections::HashSet::new();
    r.series_latencies = vec![Vec::new(); series_started.len()];
    for (at, fp) in tracker.log_since(started) {
        let Some(tick) = fp["tick"].as_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let Some(t0) = sent.get(&tick) else { continue };
        if !seen.insert(tick) {
            continue;
        }
        let latency = at.saturating_duration_since(*t0);
        if *t0 < swaps_started {
            r.steady_latencies.push(latency);
            continue;
        }
        r.sync_latencies.push(latency);
        if let Some(k) = series_started.iter().rposition(|at| at <= t0) {
            r.series_latencies[k].push(latency);
        }
        let phase = windows.iter().find_map(|(renamed, first, all)| {
            let loaded = first.unwrap_or(*renamed + Duration::from_secs(30));
            if (*renamed..loaded).contains(t0) {
                Some(0)
            } else {
                (*t0 >= loaded && all.is_none_or(|all| *t0 < all)).then_some(1)
            }
        });
        r.phase_latencies[phase.unwrap_or(2)].push(latency);
    }
    ds.stop(Duration::from_secs(60)).await?;
    Ok(r)
}

/// The section for the measured figures.
pub fn section(r: &Reload) -> Section {
    let mut s = Section::new(
        6,
        "Hot reload under load",
        &[
            "new version",
            "swaps",
            "p50 (first object)",
            "p99 (first object)",
            "p50 / p99 (all objects)",
            "not seen",
            "writes per swap (median)",
        ],
    );
    for x in &r.series {
        s.row(vec![
            x.name.clone(),
            (x.first.len() + x.missed).to_string(),
            millis(percentile(&x.first, 50.0)),
            millis(percentile(&x.first, 99.0)),
            format!("{} / {}", millis(percentile(&x.all, 50.0)), millis(percentile(&x.all, 99.0))),
            x.missed.to_string(),
            x.writes_per_swap.to_string(),
        ]);
    }
    for x in r.series.iter().filter(|x| x.compiled) {
        let p99 = percentile(&x.first, 99.0);
        s.issue_goal(
            3,
            &format!("hot reload p99 ≤ 250 ms, including compilation: {}", x.name),
            (!x.first.is_empty()).then_some(p99 <= Duration::from_millis(250) && x.missed == 0),
            format!("p99 {} (p50 {})", millis(p99), millis(percentile(&x.first, 50.0))),
        );
    }
    s.goal("0 failed syncs during reloads", Some(r.failed_syncs == 0.0), format!("{}", r.failed_syncs));
    let (steady, swapping) = (percentile(&r.steady_latencies, 99.0), percentile(&r.sync_latencies, 99.0));
    s.issue_goal(
        4,
        "upstream change p99 during rule swaps over 1,000 objects ≤ 2× its steady p99",
        (!r.steady_latencies.is_empty() && !r.sync_latencies.is_empty()).then_some(swapping <= steady * 2),
        format!("{} during swaps, {} steady", millis(swapping), millis(steady)),
    );
    s.note(format!(
        "`downsync run` syncs {} ConfigMaps with the 4 built-ins and the `stamp` test plugin; upstream, {:.0} \
         ConfigMap updates per second keep objects in flight. Each swap renames a new `stamp.wasm` into the \
         plugins folder (the same build with its marker bytes patched: a new sha256 and a new stamp). *first \
         object* is from the rename to the first downstream write carrying the new stamp, seen through a \
         downstream watch; *all objects* is until every object carries it (downsync re-syncs every object when \
         the rules change, an eighth of the workers at once, at most about 140 a second). A version not in the artifact cache is put in use \
         with the code of Winch, wasmtime's baseline compiler; one background thread compiles it with Cranelift \
         at low priority and puts that code in its place, with no re-sync. The second series has each new version \
         in downsync's artifact cache (compiled by the bench before the churn starts), which leaves out the \
         compiles. p99 of \
         {} swaps is their maximum.",
        r.objects,
        r.churn,
        r.series.first().map_or(0, |x| x.first.len() + x.missed)
    ));
    s.note(format!(
        "During the swaps: {} failed syncs, {} refused reloads, {} writes with an older stamp after the new one \
         showed (syncs in flight finishing on the version they started with). Upstream patch to the first \
         downstream write carrying it: p50 {}, p99 {} during the swaps ({} patches); p50 {}, p99 {} in the {} s \
         of churn before the first swap ({} patches).",
        r.failed_syncs,
        r.reload_failures,
        r.late_old_writes,
        millis(percentile(&r.sync_latencies, 50.0)),
        millis(percentile(&r.sync_latencies, 99.0)),
        r.sync_latencies.len(),
        millis(percentile(&r.steady_latencies, 50.0)),
        millis(percentile(&r.steady_latencies, 99.0)),
        STEADY.as_secs(),
        r.steady_latencies.len(),
    ));
    let [loading, resyncing, between] = &r.phase_latencies;
    s.note(format!(
        "The patches sent during the swaps, by what downsync was doing when they were sent: loading the new \
         version (rename to its first write) p50 {}, p99 {} ({} patches); re-syncing every object to it (first \
         write to the last object) p50 {}, p99 {} ({}); neither, between swaps p50 {}, p99 {} ({}).",
        millis(percentile(loading, 50.0)),
        millis(percentile(loading, 99.0)),
        loading.len(),
        millis(percentile(resyncing, 50.0)),
        millis(percentile(resyncing, 99.0)),
        resyncing.len(),
        millis(percentile(between, 50.0)),
        millis(percentile(between, 99.0)),
        between.len(),
    ));
    let by_series: Vec<String> = r
        .series
        .iter()
        .zip(&r.series_latencies)
        .map(|(x, l)| {
            format!(
                "{}: p50 {}, p99 {} ({})",
                x.name,
                millis(percentile(l, 50.0)),
                millis(percentile(l, 99.0)),
                l.len()
            )
        })
        .collect();
    if !by_series.is_empty() {
        s.note(format!("The same patches by series: {}.", by_series.join("; ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_bytes_replaces_every_occurrence_and_refuses_a_missing_marker() {
        assert_eq!(patch_bytes(b"xxABxAB", b"AB", b"CD").unwrap(), b"xxCDxCD");
        assert!(patch_bytes(b"xxx", b"AB", b"CD").is_err());
        assert!(patch_bytes(b"AB", b"AB", b"C").is_err());
    }

    #[test]
    fn the_fingerprint_holds_the_stamp_and_the_tick() {
        let mut cm = config_map("n", "r", 1);
        cm["metadata"]["annotations"] = json!({"bench.downsync.dev/stamp": "s1"});
        assert_eq!(stamp_and_tick(&cm), json!({"stamp": "s1", "tick": "0"}));
    }
}
