//! Section 5: the per-object cost of each built-in rule, as a fresh wasm instance, a reused instance, and native Rust.
//!
//! Each rule runs `preserve` on one of its own fixture cases. "native" is the plugin crate's
//! `Rule::preserve` called directly (with the clones a host would make); "native + JSON" adds
//! the text round trip the wasm boundary costs (serialise both inputs, parse them, serialise
//! and parse the output), to split the wasm overhead into encoding and the sandbox itself.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use downsync::plugin::{Decision, EngineConfig, Plugin, PluginEngine, fixtures};
use downsync_plugin_sdk::{Decision as NativeDecision, Rule};
use serde_json::Value;

use super::report::Section;
use super::timing::{interleaved, micros, ratio};

type Native = fn(Value, Value) -> Result<NativeDecision, String>;

/// A built-in rule and the fixture case it is timed on.
struct Case {
    plugin: &'static str,
    file: &'static str,
    fixture: &'static str,
    native: Native,
}

const CASES: [Case; 4] = [
    Case {
        plugin: "service",
        file: "downsync_plugin_service.wasm",
        fixture: "plugins/service/fixtures/nodeport-kept",
        native: <downsync_plugin_service::ServiceRule as Rule>::preserve,
    },
    Case {
        plugin: "persistent-volume",
        file: "downsync_plugin_persistent_volume.wasm",
        fixture: "plugins/persistent-volume/fixtures/pvc-bound",
        native: <downsync_plugin_persistent_volume::PersistentVolumeRule as Rule>::preserve,
    },
    Case {
        plugin: "immutable-config",
        file: "downsync_plugin_immutable_config.wasm",
        fixture: "plugins/immutable-config/fixtures/unchanged-applies",
        native: <downsync_plugin_immutable_config::ImmutableConfigRule as Rule>::preserve,
    },
    Case {
        plugin: "service-account",
        file: "downsync_plugin_service_account.wasm",
        fixture: "plugins/service-account/fixtures/merged-by-name",
        native: <downsync_plugin_service_account::ServiceAccountRule as Rule>::preserve,
    },
];

/// One rule's figures.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Plugin name.
    pub plugin: String,
    /// Native call (with input clones).
    pub native: Duration,
    /// Native call plus the JSON text round trip.
    pub native_json: Duration,
    /// Wasm, one kept instance.
    pub reused: Duration,
    /// Wasm, a fresh instance per call (what the syncer does).
    pub fresh: Duration,
    /// Wasm, a fresh instance and a call that does nothing (`ignore-paths` of another kind):
    /// the price of the instance alone.
    pub instantiate: Duration,
    /// Fuel per call.
    pub fuel: u64,
}

fn native_with_json(native: Native, existing: &Value, desired: &Value) -> Option<Value> {
    let (e, d) = (existing.to_string(), desired.to_string());
    let (e, d): (Value, Value) = (serde_json::from_str(&e).ok()?, serde_json::from_str(&d).ok()?);
    match native(e, d).ok()? {
        NativeDecision::Apply(v) => serde_json::from_str(&v.to_string()).ok(),
        _ => None,
    }
}

/// Times every built-in rule; `plugins` holds the built components, `repo` the fixtures.
pub fn measure(plugins: &Path, repo: &Path, batches: usize, batch: Duration) -> Result<Vec<Cost>> {
    // No artifact cache: this section times calls, not loading.
    let engine = PluginEngine::new(EngineConfig { cache_dir: None, ..EngineConfig::default() })?;
    let mut out = Vec::new();
    for case in &CASES {
        let plugin =
            Plugin::load_file(&engine, &plugins.join(case.file)).with_context(|| format!("loading {}", case.file))?;
        let fixture = fixtures::load_case(&repo.join(case.fixture))?;
        let existing = fixture.existing.clone().with_context(|| format!("{} has no existing.yaml", case.fixture))?;
        let desired = fixture.desired.clone();
        // The three ways must agree before they are compared.
        let native = match (case.native)(existing.clone(), desired.clone()) {
            Ok(NativeDecision::Apply(v)) => v,
            other => bail!("{}: native preserve gave {other:?}, expected Apply", case.plugin),
        };
        let fresh = plugin.preserve(&existing, &desired)?;
        let mut session = plugin.session()?;
        let reused = session.preserve(&existing, &desired)?;
        for (way, got) in [("fresh", &fresh.value), ("reused", &reused.value)] {
            if *got != Decision::Apply(native.clone()) {
                bail!("{}: wasm ({way}) and native preserve disagree", case.plugin);
            }
        }
        let mut failures = 0u64;
        let times = {
            let mut f_native = || {
                black_box((case.native)(black_box(existing.clone()), black_box(desired.clone())).is_ok());
            };
            let mut f_json = || {
                black_box(native_with_json(case.native, black_box(&existing), black_box(&desired)));
            };
            let mut f_reused = || {
                failures += u64::from(session.preserve(black_box(&existing), black_box(&desired)).is_err());
            };
            let fresh_plugin = plugin.clone();
            let mut f_fresh = || {
                black_box(fresh_plugin.preserve(black_box(&existing), black_box(&desired)).is_ok());
            };
            let mut f_instantiate = || {
                black_box(plugin.ignore_paths(black_box("none.example"), black_box("Nothing")).is_ok());
            };
            interleaved(
                &mut [&mut f_native, &mut f_json, &mut f_reused, &mut f_fresh, &mut f_instantiate],
                batches,
                batch,
            )
        };
        if failures > 0 {
            bail!("{}: {failures} reused-instance calls failed", case.plugin);
        }
        out.push(Cost {
            plugin: case.plugin.to_string(),
            native: times[0],
            native_json: times[1],
            reused: times[2],
            fresh: times[3],
            instantiate: times[4],
            fuel: fresh.fuel,
        });
    }
    Ok(out)
}

/// The section for the measured costs.
pub fn section(costs: &[Cost]) -> Section {
    let mut s = Section::new(
        5,
        "Rule cost (per object, `preserve`)",
        &[
            "plugin",
            "native",
            "native + JSON",
            "wasm, reused instance",
            "wasm, fresh instance",
            "fresh instance, empty call",
            "fresh / native",
            "reused / native",
            "fresh / native + JSON",
            "fuel",
        ],
    );
    for c in costs {
        s.row(vec![
            c.plugin.clone(),
            micros(c.native),
            micros(c.native_json),
            micros(c.reused),
            micros(c.fresh),
            micros(c.instantiate),
            ratio(c.fresh, c.native),
            ratio(c.reused, c.native),
            ratio(c.fresh, c.native_json),
            c.fuel.to_string(),
        ]);
    }
    let worst = costs.iter().max_by(|a, b| {
        (a.fresh.as_secs_f64() / a.native.as_secs_f64()).total_cmp(&(b.fresh.as_secs_f64() / b.native.as_secs_f64()))
    });
    if let Some(w) = worst {
        let r = w.fresh.as_secs_f64() / w.native.as_secs_f64().max(1e-12);
        s.goal("fresh-instance wasm ≤ 3× native", Some(r <= 3.0), format!("{r:.1}× (worst: {})", w.plugin));
    }
    s.note(
        "Median of interleaved batches after a warm-up, one fixture case per rule. *native* calls the plugin \
         crate's `Rule::preserve` with cloned inputs; *native + JSON* adds the text round trip the WIT \
         boundary imposes (serialise both objects, parse them, serialise and parse the result); *reused* keeps \
         one instance (`Plugin::session`, fuel reset per call); *fresh* is `Plugin::preserve`, a new store and \
         instance from the pooling allocator per call, which is what the syncer does; *empty call* is a fresh \
         instance running `ignore-paths` for a kind the rule does not handle, the price of the instance alone.",
    );
    s
}
