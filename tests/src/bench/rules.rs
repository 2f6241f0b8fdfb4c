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
use downsync::plugin::{Decision, EngineConfig, Plugin, PluginEngine, fixtures, projection};
use downsync::sync::Intent;
use downsync_plugin_sdk::{Decision as NativeDecision, Intent as NativeIntent, Rule};
use serde_json::{Value, json};

use super::report::Section;
use super::timing::{interleaved, micros, ratio};

type Native = fn(Value, Value, &NativeIntent) -> Result<NativeDecision, String>;

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

/// The objects a rule is timed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    /// The fixture case as it is: a bare object, no metadata beyond its name.
    Fixture,
    /// The fixture case with what objects carry in a cluster: labels, annotations (downsync's
    /// own and a user's), and on the live object server metadata and status.
    Typical,
}

/// One rule's figures on one kind of objects.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Plugin name.
    pub plugin: String,
    /// Which objects.
    pub objects: Objects,
    /// Input sizes, JSON bytes: existing + desired, full and as sent to the plugin.
    pub full_bytes: usize,
    /// What the plugin is sent (its projection).
    pub sent_bytes: usize,
    /// Native call on the full objects (with input clones).
    pub native: Duration,
    /// Wasm, one kept instance.
    pub reused: Duration,
    /// Wasm, a fresh instance per call (what the syncer does).
    pub fresh: Duration,
    /// A fresh store and instance, and no call.
    pub instantiate: Duration,
    /// Host side before the call: projecting and serialising both inputs.
    pub copy_in: Duration,
    /// Host side after the call: parsing the output and merging it into the full object.
    pub merge: Duration,
    /// What a 0.1.0 default hook (a pass-through `preserve`, the SDK's default) costs on the
    /// same objects: what each hook a 0.2.0 plugin does not list saves per object.
    pub skipped_hook: Duration,
    /// The hooks the plugin does not implement, which 0.2.0 never calls.
    pub skipped: Vec<&'static str>,
    /// Fuel per call.
    pub fuel: u64,
}

/// Adds what objects carry in a cluster to a fixture case's object.
fn typical(mut obj: Value, live: bool) -> Value {
    let labels = json!({"app.kubernetes.io/name": "web", "app.kubernetes.io/instance": "web-prod",
        "app.kubernetes.io/version": "1.27.3", "app.kubernetes.io/component": "frontend",
        "app.kubernetes.io/part-of": "shop", "team": "payments"});
    let annotations = json!({
        "downsync.dev/owner": "downsync/default", "downsync.dev/desired-hash": "3f9a1c2b7d4e5f60718293a4b5c6d7e8",
        "downsync.dev/upstream-namespace": "team-a", "downsync.dev/managed-labels": "[\"app.kubernetes.io/name\",\"team\"]",
        "description": "Serves the shop's web frontend. Owned by the payments team; page them before changing ports.",
        "config.example.com/settings": "{\"timeouts\":{\"read\":\"30s\",\"write\":\"30s\",\"idle\":\"120s\"},\"retries\":3,\"circuitBreaker\":{\"threshold\":0.5,\"window\":\"60s\"},\"canary\":{\"weight\":10,\"header\":\"x-canary\"}}"
    });
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("labels".into(), labels);
        let mut a = annotations;
        if let (Some(a), Some(old)) = (a.as_object_mut(), meta.get("annotations").and_then(Value::as_object)) {
            a.extend(old.clone());
        }
        meta.insert("annotations".into(), a);
        if live {
            meta.insert("uid".into(), json!("8d3c5a4e-2f1b-4c6d-9e8f-0a1b2c3d4e5f"));
            meta.insert("creationTimestamp".into(), json!("2026-11-30T10:00:00Z"));
            meta.insert("generation".into(), json!(3));
            meta.entry("resourceVersion").or_insert(json!("48213"));
        }
    }
    if live && let Some(o) = obj.as_object_mut() {
        o.entry("status").or_insert(json!({"conditions": [{"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-11-30T10:00:05Z", "reason": "Reconciled", "message": "ok"}]}));
    }
    obj
}

/// The JSON bytes a plugin is sent for `obj`: its projection, or all of it.
fn sent(plugin: &Plugin, obj: &Value) -> String {
    let reads = &plugin.info().reads;
    if reads.is_empty() { obj.to_string() } else { projection::project_text(obj, &projection::effective(obj, reads)) }
}

/// Times every built-in rule on fixture and typical objects; `plugins` holds the built
/// components, `repo` the fixtures.
pub fn measure(plugins: &Path, repo: &Path, batches: usize, batch: Duration) -> Result<Vec<Cost>> {
    // No artifact cache: this section times calls, not loading. Cranelift's code, as every
    // version runs once its background compile is done.
    let engine =
        PluginEngine::new(EngineConfig { cache_dir: None, tiered_compilation: false, ..EngineConfig::default() })?;
    let legacy = Plugin::load_file(&engine, &plugins.join("downsync_plugin_testing_legacy.wasm"))
        .context("loading the 0.1.0 test component")?;
    let mut out = Vec::new();
    for case in &CASES {
        let plugin =
            Plugin::load_file(&engine, &plugins.join(case.file)).with_context(|| format!("loading {}", case.file))?;
        let fixture = fixtures::load_case(&repo.join(case.fixture))?;
        let existing = fixture.existing.clone().with_context(|| format!("{} has no existing.yaml", case.fixture))?;
        for objects in [Objects::Fixture, Objects::Typical] {
            let (existing, desired) = match objects {
                Objects::Fixture => (existing.clone(), fixture.desired.clone()),
                Objects::Typical => (typical(existing.clone(), true), typical(fixture.desired.clone(), false)),
            };
            out.push(measure_one(case, &plugin, &legacy, objects, &existing, &desired, batches, batch)?);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn measure_one(
    case: &Case,
    plugin: &Plugin,
    legacy: &Plugin,
    objects: Objects,
    existing: &Value,
    desired: &Value,
    batches: usize,
    batch: Duration,
) -> Result<Cost> {
    let intent = Intent::Unknown;
    let native_intent = NativeIntent::unknown();
    // The three ways must agree before they are compared.
    let native = match (case.native)(existing.clone(), desired.clone(), &native_intent) {
        Ok(NativeDecision::Apply(v)) => v,
        other => bail!("{}: native preserve gave {other:?}, expected Apply", case.plugin),
    };
    let fresh = plugin.preserve(existing, desired, &intent)?;
    let mut session = plugin.session()?;
    let reused = session.preserve(existing, desired, &intent)?;
    for (way, got) in [("fresh", &fresh.value), ("reused", &reused.value)] {
        if *got != Decision::Apply(native.clone()) {
            bail!("{}: wasm ({way}) and native preserve disagree", case.plugin);
        }
    }
    let reads = plugin.info().reads.clone();
    let sent_out = {
        let eff = projection::effective(desired, &reads);
        projection::project(&native, &eff).to_string()
    };
    let mut failures = 0u64;
    let times = {
        let mut f_native = || {
            black_box((case.native)(black_box(existing.clone()), black_box(desired.clone()), &native_intent).is_ok());
        };
        let mut f_reused = || {
            failures += u64::from(session.preserve(black_box(existing), black_box(desired), &intent).is_err());
        };
        let mut f_fresh = || {
            black_box(plugin.preserve(black_box(existing), black_box(desired), &intent).is_ok());
        };
        let mut f_instantiate = || {
            black_box(plugin.instantiate_only().is_ok());
        };
        let mut f_copy_in = || {
            black_box((sent(plugin, black_box(existing)), sent(plugin, black_box(desired))));
        };
        let mut f_merge = || {
            let back: Value = serde_json::from_str(black_box(&sent_out)).unwrap_or(Value::Null);
            if !reads.is_empty() {
                let mut full = desired.clone();
                black_box(projection::merge(&mut full, back, &projection::effective(desired, &reads)).is_ok());
            } else {
                black_box(back);
            }
        };
        let mut f_skipped = || {
            black_box(legacy.preserve(black_box(existing), black_box(desired), &intent).is_ok());
        };
        interleaved(
            &mut [
                &mut f_native,
                &mut f_reused,
                &mut f_fresh,
                &mut f_instantiate,
                &mut f_copy_in,
                &mut f_merge,
                &mut f_skipped,
            ],
            batches,
            batch,
        )
    };
    if failures > 0 {
        bail!("{}: {failures} reused-instance calls failed", case.plugin);
    }
    let hooks = plugin.info().hooks;
    let skipped = [("transform", hooks.transform), ("preserve", hooks.preserve), ("ignore-paths", hooks.ignore_paths)]
        .into_iter()
        .filter(|(_, listed)| !listed)
        .map(|(name, _)| name)
        .collect();
    Ok(Cost {
        plugin: case.plugin.to_string(),
        objects,
        full_bytes: existing.to_string().len() + desired.to_string().len(),
        sent_bytes: sent(plugin, existing).len() + sent(plugin, desired).len(),
        native: times[0],
        reused: times[1],
        fresh: times[2],
        instantiate: times[3],
        copy_in: times[4],
        merge: times[5],
        skipped_hook: times[6],
        skipped,
        fuel: fresh.fuel,
    })
}

/// The section for the measured costs.
pub fn section(costs: &[Cost]) -> Section {
    let mut s = Section::new(
        5,
        "Rule cost (per object, `preserve`, rules 0.2.0)",
        &[
            "plugin",
            "objects",
            "bytes full → sent",
            "native (full objects)",
            "wasm, reused instance",
            "wasm, fresh instance",
            "fresh / native",
            "of fresh: instantiate",
            "copy in",
            "guest (parse, rule, serialise)",
            "parse out + merge",
            "hooks never called",
            "saved per object (0.1.0 default hook)",
            "fuel",
        ],
    );
    for c in costs {
        let guest = c.fresh.saturating_sub(c.instantiate + c.copy_in + c.merge);
        s.row(vec![
            c.plugin.clone(),
            match c.objects {
                Objects::Fixture => "fixture".into(),
                Objects::Typical => "typical metadata".into(),
            },
            format!("{} → {}", c.full_bytes, c.sent_bytes),
            micros(c.native),
            micros(c.reused),
            micros(c.fresh),
            ratio(c.fresh, c.native),
            micros(c.instantiate),
            micros(c.copy_in),
            micros(guest),
            micros(c.merge),
            if c.skipped.is_empty() { "none".into() } else { c.skipped.join(", ") },
            if c.skipped.iter().any(|h| *h != "ignore-paths") { micros(c.skipped_hook) } else { "—".into() },
            c.fuel.to_string(),
        ]);
    }
    for objects in [Objects::Typical, Objects::Fixture] {
        let worst = costs.iter().filter(|c| c.objects == objects).max_by(|a, b| {
            (a.fresh.as_secs_f64() / a.native.as_secs_f64())
                .total_cmp(&(b.fresh.as_secs_f64() / b.native.as_secs_f64()))
        });
        if let Some(w) = worst {
            let r = w.fresh.as_secs_f64() / w.native.as_secs_f64().max(1e-12);
            let label = match objects {
                Objects::Typical => "fresh-instance wasm ≤ 3× native (typical objects)",
                Objects::Fixture => "fresh-instance wasm ≤ 3× native (bare fixture objects)",
            };
            s.goal(label, Some(r <= 3.0), format!("{r:.1}× (worst: {})", w.plugin));
        }
    }
    s.note(
        "Median of interleaved batches after a warm-up, one fixture case per rule, on the fixture objects as they \
         are and with typical metadata added (6 labels, downsync's 4 annotations and 2 user annotations, and on \
         the live object uid, timestamps and a status condition). *native* calls the plugin crate's \
         `Rule::preserve` on the full objects with cloned inputs; *fresh* is `Plugin::preserve`, a new store and \
         instance from the pooling allocator per call, which is what the syncer does, sent only the plugin's \
         `reads`; *reused* keeps one instance (`Plugin::session`). The split of *fresh*: *instantiate* is a fresh \
         store and instance with no call; *copy in* is projecting and serialising both inputs on \
         the host; *parse out + merge* is parsing the output and merging it into the full object; *guest* is the \
         rest (copying the text into the instance, parsing it there, the rule, serialising the result). *saved \
         per object* is what a 0.1.0 plugin paid for each default hook it did not need (the 0.1.0 test \
         component's pass-through `preserve` on the same objects): 0.2.0 does not call an unlisted hook. \
         `ignore-paths` answers are cached per kind, so skipping it saves nothing per object.",
    );
    s
}
