//! A reused plugin instance (`Plugin::session`): the same verdicts as a fresh instance, a full fuel budget per call, and no calls after a failure.

use downsync::plugin::{CallFailure, EngineConfig, Error, Plugin, PluginEngine, fixtures};
use downsync::sync::Intent;
use downsync_tests::plugins::plugin_path;
use downsync_tests::repo_root;
use serde_json::json;

fn engine(fuel: u64) -> PluginEngine {
    PluginEngine::new(EngineConfig {
        fuel,
        deadline_ms: 2_000,
        memory_bytes: 16 << 20,
        pool_instances: 8,
        max_instances_per_call: 32,
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        tiered_compilation: true,
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn load(engine: &PluginEngine, crate_name: &str) -> Plugin {
    Plugin::load_file(engine, &plugin_path(crate_name).expect("plugin built")).expect("plugin loads")
}

#[test]
fn a_session_gives_the_same_decisions_as_fresh_instances_call_after_call() {
    let engine = engine(50_000_000);
    let plugin = load(&engine, "downsync-plugin-service");
    let cases = fixtures::load_dir(&repo_root().join("plugins/service/fixtures")).expect("fixtures");
    let mut session = plugin.session().expect("session");
    for round in 0..3 {
        for case in cases.iter().filter(|c| c.existing.is_some()) {
            let existing = case.existing.as_ref().expect("existing");
            let fresh = plugin.preserve(existing, &case.desired, &Intent::Unknown).expect("fresh call");
            let reused = session.preserve(existing, &case.desired, &Intent::Unknown).expect("reused call");
            assert_eq!(reused.value, fresh.value, "round {round}, case {}", case.name);
        }
    }
}

#[test]
fn every_session_call_gets_the_whole_fuel_budget() {
    let probe = engine(50_000_000);
    let plugin = load(&probe, "downsync-plugin-service");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
                     "spec": {"ports": [{"port": 80}]}});
    let per_call = plugin.preserve(&svc, &svc, &Intent::Unknown).expect("probe call").fuel;
    // A budget for three calls: twenty calls only succeed if each one starts full.
    let tight = engine(per_call * 3);
    let mut session = load(&tight, "downsync-plugin-service").session().expect("session");
    for i in 0..20 {
        session.preserve(&svc, &svc, &Intent::Unknown).unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
}

#[test]
fn a_session_refuses_calls_after_a_failed_one() {
    let engine = engine(50_000_000);
    let mut session = load(&engine, "downsync-plugin-testing-faulty").session().expect("session");
    let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
    let mut trap = ok.clone();
    trap["metadata"]["annotations"] = json!({"downsync.dev/fault": "trap"});
    session.preserve(&ok, &ok, &Intent::Unknown).expect("a good call first");
    let err = session.preserve(&ok, &trap, &Intent::Unknown).expect_err("the trap fails");
    assert!(matches!(err, Error::Call { kind: CallFailure::Trap, .. }), "{err}");
    let err = session.preserve(&ok, &ok, &Intent::Unknown).expect_err("the session is spent");
    assert!(err.to_string().contains("unusable after an earlier failed call"), "{err}");
}
