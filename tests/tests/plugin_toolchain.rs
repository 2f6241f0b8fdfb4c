//! The WASM toolchain end to end: a plugin crate built for wasm32-wasip2 loads in the host's
//! wasmtime and runs.

use downsync::plugin::{EngineConfig, Error, Plugin, PluginEngine};
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
    let out = plugin.transform(&desired).expect("transform runs").value;
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/minimal"], "seen");
    assert_eq!(out["data"], desired["data"], "the rest of the object is untouched");

    let cached: Vec<_> = std::fs::read_dir(&cache).expect("cache dir").flatten().collect();
    assert_eq!(cached.len(), 1, "the precompiled component is cached on disk");
    let again = Plugin::load_file(&engine_with_cache(&cache), &wasm).expect("loads from cache");
    assert_eq!(again.digest(), plugin.digest());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_with_its_name() {
    let engine = engine_with_cache(&scratch_dir("toolchain-bad"));
    let err = Plugin::load(&engine, "garbage", b"\0asm but not really").expect_err("refused");
    assert!(matches!(err, Error::Compile { .. }), "{err}");
    assert!(err.to_string().contains("plugin garbage"), "{err}");
}
