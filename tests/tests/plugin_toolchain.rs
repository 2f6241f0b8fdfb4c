//! The WASM toolchain end to end: a plugin crate built for wasm32-wasip2 loads in the host's
//! wasmtime and runs.

use downsync::plugin::{
    EngineConfig, Error, Hooks, Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet, RegistryConfig, Tier,
    WitVersion,
};
use downsync::sync::{Intent, RuleDecision};
use downsync_tests::plugins::plugin_path;
use serde_json::json;

fn engine_with_cache(dir: &std::path::Path) -> PluginEngine {
    PluginEngine::new(EngineConfig { cache_dir: Some(dir.to_path_buf()), ..EngineConfig::default() }).expect("engine")
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("downsync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_minimal_plugin_loads_and_transforms_a_configmap() {
    let wasm = plugin_path("downsync-plugin-minimal").expect("plugin built");
    let cache = scratch_dir("toolchain-cache");
    let engine = engine_with_cache(&cache);

    let plugin = Plugin::load_file(&engine, &wasm).expect("loads");
    assert_eq!(plugin.name(), "minimal");
    assert!(plugin.info().handles("", "ConfigMap"));
    assert!(!plugin.info().handles("apps", "Deployment"));

    let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}, "data": {"k": "v"}});
    let out = plugin.transform(&desired, &Intent::Unknown).expect("transform runs").value;
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/minimal"], "seen");
    assert_eq!(out["data"], desired["data"], "the rest of the object is untouched");

    assert!(plugin.wait_optimized(std::time::Duration::from_secs(120)), "Cranelift's code follows Winch's");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "the precompiled component is cached on disk");
    let again = Plugin::load_file(&engine_with_cache(&cache), &wasm).expect("loads from cache");
    assert_eq!(again.digest(), plugin.digest());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn an_uncached_plugin_runs_winch_code_at_once_then_cranelift_code_with_the_same_verdicts() {
    let wasm = plugin_path("downsync-plugin-service").expect("plugin built");
    let cache = scratch_dir("toolchain-tiers");
    let engine = engine_with_cache(&cache);
    assert!(engine.tiered(), "Winch runs on this machine");
    let existing = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
        "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 80, "nodePort": 30080}], "type": "NodePort"}});
    let desired = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
        "spec": {"ports": [{"port": 80}], "type": "NodePort"}});

    let plugin = Plugin::load_file(&engine, &wasm).expect("loads");
    assert_eq!(plugin.tier(), Tier::Baseline, "in use before Cranelift has compiled it");
    let baseline = plugin.preserve(&existing, &desired, &Intent::Unknown).expect("preserve runs on Winch's code");
    let held_by_the_set = plugin.clone();

    assert!(plugin.wait_optimized(std::time::Duration::from_secs(120)), "Cranelift's code replaces it");
    assert_eq!(held_by_the_set.tier(), Tier::Optimized, "in every clone: the set in use needs no swap");
    assert_eq!(held_by_the_set.digest(), plugin.digest(), "the same version");
    let optimized = plugin.preserve(&existing, &desired, &Intent::Unknown).expect("preserve runs on Cranelift's code");
    assert_eq!(format!("{:?}", optimized.value), format!("{:?}", baseline.value), "the same decision");
    // Winch follows Cranelift's cost per operator but not to the unit (70296 against 70747
    // here): only an object within a percent of its budget could get another verdict.
    assert!(
        optimized.fuel.abs_diff(baseline.fuel) * 100 < optimized.fuel,
        "fuel counted within 1%: {} on Winch's code, {} on Cranelift's",
        baseline.fuel,
        optimized.fuel
    );
    assert!(format!("{:?}", optimized.value).contains("10.0.0.7"), "clusterIP kept: {:?}", optimized.value);

    let again = Plugin::load_file(&engine_with_cache(&cache), &wasm).expect("loads from cache");
    assert_eq!(again.tier(), Tier::Optimized, "a cached artifact is Cranelift's, in use at once");
    let untiered =
        PluginEngine::new(EngineConfig { cache_dir: None, tiered_compilation: false, ..EngineConfig::default() })
            .expect("engine");
    assert_eq!(Plugin::load_file(&untiered, &wasm).expect("loads").tier(), Tier::Optimized, "tiering off");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_with_its_name() {
    let engine = engine_with_cache(&scratch_dir("toolchain-bad"));
    let err = Plugin::load(&engine, "garbage", b"\0asm but not really").expect_err("refused");
    assert!(matches!(err, Error::Compile { .. }), "{err}");
    assert!(err.to_string().contains("plugin garbage"), "{err}");
}

#[test]
fn a_0_1_0_and_a_0_2_0_component_chain_on_one_kind_and_unlisted_hooks_are_never_called() {
    let engine = PluginEngine::new(EngineConfig { cache_dir: None, ..EngineConfig::default() }).expect("engine");
    let legacy = Plugin::load_file(&engine, &plugin_path("downsync-plugin-testing-legacy").expect("built"))
        .expect("0.1.0 loads");
    let minimal =
        Plugin::load_file(&engine, &plugin_path("downsync-plugin-minimal").expect("built")).expect("0.2.0 loads");
    assert_eq!((legacy.wit(), legacy.info().hooks), (WitVersion::V0_1, Hooks::ALL));
    assert_eq!(minimal.wit(), WitVersion::V0_2);
    assert_eq!(minimal.info().hooks, Hooks { transform: true, preserve: false, ignore_paths: false });
    assert_eq!(minimal.info().reads, vec!["/metadata/annotations".to_string()]);

    let metrics = Metrics::default();
    let set = PluginSet::new(vec![legacy, minimal], &RegistryConfig::default()).expect("no overlap");
    let registry = PluginRegistry::new(set, metrics.clone());
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}, "data": {"k": "v"}});
    let out = registry.transform(cm.clone()).expect("both transform");
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/legacy"], "0.1.0");
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/minimal"], "seen");
    assert_eq!(out["data"], cm["data"], "minimal was sent only annotations; data is merged back untouched");
    let RuleDecision::Apply(kept) = registry.preserve(&out, out.clone()).expect("preserve") else { panic!("apply") };
    assert_eq!(kept, out);
    assert!(registry.ignore_paths("", "ConfigMap").expect("ignore paths").is_empty());
    assert_eq!(metrics.calls("legacy", "preserve"), 1, "0.1.0: every hook is called");
    assert_eq!(metrics.calls("legacy", "ignore-paths"), 1);
    assert_eq!(metrics.calls("minimal", "transform"), 1);
    assert_eq!(metrics.calls("minimal", "preserve"), 0, "0.2.0: an unlisted hook is never called");
    assert_eq!(metrics.calls("minimal", "ignore-paths"), 0);
}
