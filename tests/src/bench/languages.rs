//! Section 9: the hpa-replicas rule in Rust, Python (componentize-py) and JavaScript (jco,
//! QuickJS): component size, cold compile, cached load, and `preserve` in a fresh and a reused
//! instance.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use downsync::plugin::{Decision, EngineConfig, InstancePolicy, Plugin, PluginEngine};
use downsync::sync::Intent;
use serde_json::{Value, json};

use super::report::Section;
use super::timing::{interleaved, micros, millis, ratio, secs};

/// One language's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// "Rust", "Python", "JavaScript (QuickJS)".
    pub language: String,
    /// Component bytes.
    pub size: u64,
    /// Load with an empty artifact cache: Winch's compile, until the plugin is in use.
    pub cold: Duration,
    /// Load from a warm artifact cache.
    pub warm: Duration,
    /// `preserve` in a fresh instance per call (the default policy).
    pub fresh: Duration,
    /// `preserve` in a reused instance (what a stateless plugin runs in).
    pub reused: Duration,
    /// Fuel per `preserve` call.
    pub fuel: u64,
}

fn deployment(replicas: u32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]}}}})
}

/// Measures one component.
fn measure_one(language: &str, wasm: &Path, work: &Path, batches: usize, batch: Duration) -> Result<Figures> {
    let size = std::fs::metadata(wasm).with_context(|| format!("reading {}", wasm.display()))?.len();
    let cache = work.join(format!("languages-cache-{}", language.split_whitespace().next().unwrap_or("x")));
    let _ = std::fs::remove_dir_all(&cache);
    let config = EngineConfig { cache_dir: Some(cache.clone()), ..EngineConfig::default() };
    let started = Instant::now();
    let first = Plugin::load_file(&PluginEngine::new(config.clone())?, wasm)?;
    let cold = started.elapsed();
    // The warm load below reads the artifact the background Cranelift compile writes.
    anyhow::ensure!(first.wait_optimized(Duration::from_secs(600)), "{language}: no optimized code within 600 s");
    drop(first);
    let engine = PluginEngine::new(config)?;
    let started = Instant::now();
    let plugin = Plugin::load_file(&engine, wasm)?;
    let warm = started.elapsed();
    let _ = std::fs::remove_dir_all(&cache);

    let reused = plugin.with_instances(InstancePolicy::Reused);
    anyhow::ensure!(
        reused.instances() == InstancePolicy::Reused,
        "{language}: the example does not declare itself stateless"
    );
    let (existing, desired) = (deployment(7, "nginx:1.27"), deployment(2, "nginx:1.28"));
    let check = plugin.preserve(&existing, &desired, &Intent::Unknown)?;
    let Decision::Apply(out) = &check.value else { anyhow::bail!("{language}: preserve did not apply") };
    anyhow::ensure!(out["spec"]["replicas"] == 7, "{language}: the live replicas were not kept: {out}");
    let fuel = check.fuel;
    let mut fresh_call = || {
        let _ = plugin.preserve(&existing, &desired, &Intent::Unknown);
    };
    let mut reused_call = || {
        let _ = reused.preserve(&existing, &desired, &Intent::Unknown);
    };
    let t = interleaved(&mut [&mut fresh_call, &mut reused_call], batches, batch);
    Ok(Figures { language: language.into(), size, cold, warm, fresh: t[0], reused: t[1], fuel })
}

/// Measures the three hpa-replicas components: the Rust one from `rust_built`, the others from
/// the guest toolchains' build folder.
pub fn measure(rust_built: &Path, guest_built: &Path, work: &Path) -> Result<Vec<Figures>> {
    let components: [(&str, PathBuf); 3] = [
        ("Rust", rust_built.join("downsync_example_hpa_replicas.wasm")),
        ("Python", guest_built.join("python_hpa_replicas.wasm")),
        ("JavaScript (QuickJS)", guest_built.join("js_hpa_replicas.wasm")),
    ];
    components.iter().map(|(lang, wasm)| measure_one(lang, wasm, work, 9, Duration::from_millis(60))).collect()
}

/// The section for the measured figures.
pub fn section(figures: &[Figures]) -> Section {
    let mut s = Section::new(
        9,
        "Plugins in other languages (hpa-replicas, `preserve`)",
        &[
            "language",
            "component",
            "in use (empty cache)",
            "load (warm cache)",
            "fresh instance",
            "reused instance",
            "fresh / reused",
            "fresh / Rust fresh",
            "fuel",
        ],
    );
    let rust_fresh = figures.first().map(|f| f.fresh).unwrap_or_default();
    for f in figures {
        #[allow(clippy::cast_precision_loss)] // a size in MB, for reading
        let mb = f.size as f64 / 1e6;
        s.row(vec![
            f.language.clone(),
            format!("{mb:.2} MB"),
            if f.cold > Duration::from_secs(2) { secs(f.cold) } else { millis(f.cold) },
            millis(f.warm),
            if f.fresh > Duration::from_millis(1) { millis(f.fresh) } else { micros(f.fresh) },
            if f.reused > Duration::from_millis(1) { millis(f.reused) } else { micros(f.reused) },
            ratio(f.fresh, f.reused),
            ratio(f.fresh, rust_fresh),
            f.fuel.to_string(),
        ]);
    }
    s.note(
        "The same rule (keep the live `spec.replicas` of a Deployment) built from `examples/plugins/hpa-replicas` \
         (cargo, `plugin` profile), `examples/plugins/python-hpa-replicas` (componentize-py 0.25.1) and \
         `examples/plugins/js-hpa-replicas` (jco 1.35.0, QuickJS backend, synchronous exports), each by \
         `tests/guest-toolchains.sh`. *in use* is `Plugin::load_file` with an empty artifact cache: Winch's \
         compile, the plugin then runs while Cranelift compiles it in the background and writes the cache; \
         *load* is the same with the cache warm (Cranelift's code; the calls are timed on it). *fresh instance* is \
         `Plugin::preserve` in fresh instances (a new store and instance per call, what a plugin that does not \
         declare itself stateless gets: for Python and JavaScript that restores the interpreter's snapshot); \
         *reused* is the same plugin in reused instances, which it runs in because it declares itself \
         stateless (one kept instance, reset between calls). Median of interleaved batches after a \
         warm-up; the fixture Deployment, sent only `/spec/replicas`.",
    );
    s
}
