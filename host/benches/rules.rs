//! The service rule: a fresh wasm instance per call (bare, and through the registry with its contract check) against the same logic in native Rust.
//!
//! Build the component first, then run:
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --profile plugin -p downsync-plugin-service
//! cargo bench -p downsync --bench rules
//! ```
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use downsync::plugin::{EngineConfig, Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet, RegistryConfig};
use downsync_plugin_sdk::Rule;
use serde_json::{Value, json};

fn mk_pair() -> (Value, Value) {
    let existing = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": "1234"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.17", "clusterIPs": ["10.96.0.17"], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53, "nodePort": 30053}]}
    });
    let desired = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]}
    });
    (existing, desired)
}

fn wasm_path() -> PathBuf {
    let dir = std::env::var_os("DOWNSYNC_PLUGIN_BUILD_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("wasm32-wasip2/plugin")
    });
    dir.join("downsync_plugin_service.wasm")
}

fn bench(c: &mut Criterion) {
    let (existing, desired) = mk_pair();
    c.bench_function("service rule, native rust", |b| {
        b.iter(|| {
            downsync_plugin_service::ServiceRule::preserve(
                black_box(existing.clone()),
                black_box(desired.clone()),
                &downsync_plugin_sdk::Intent::unknown(),
            )
        })
    });

    let path = wasm_path();
    if !path.is_file() {
        eprintln!("{} is missing; build it to bench the wasm rule", path.display());
        return;
    }
    let Ok(engine) = PluginEngine::new(EngineConfig::default()) else { return eprintln!("no engine") };
    let Ok(plugin) = Plugin::load_file(&engine, &path) else { return eprintln!("cannot load {}", path.display()) };
    c.bench_function("service rule, wasm, fresh instance per call", |b| {
        b.iter(|| plugin.preserve(black_box(&existing), black_box(&desired), &downsync::sync::Intent::Unknown).is_ok())
    });
    c.bench_function("wasm, fresh instance + trivial call (ignore-paths)", |b| {
        b.iter(|| plugin.ignore_paths(black_box(""), black_box("Service")).is_ok())
    });
    let Ok(set) = PluginSet::new(vec![plugin.clone()], &RegistryConfig::default()) else { return };
    let registry = PluginRegistry::new(set, Metrics::default());
    c.bench_function("service rule, wasm, through the registry (contract check, metrics)", |b| {
        b.iter(|| registry.preserve(black_box(&existing), black_box(desired.clone())))
    });
    if let Ok(called) = plugin.preserve(&existing, &desired, &downsync::sync::Intent::Unknown) {
        eprintln!("fuel per preserve call: {}", called.fuel);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
