//! The built-in plugins through the host (fixtures, composition), and faulty plugins that must not take the host down.

use downsync::plugin::fixtures;
use downsync::plugin::{
    CallFailure, EngineConfig, Error, FailurePolicy, Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet,
    PluginSettings, RegistryConfig,
};
use downsync::sync::rules::RuleDecision;
use downsync_tests::plugins::plugin_path;
use downsync_tests::repo_root;
use serde_json::{Value, json};

/// Small limits keep the runaway plugins quick to stop.
fn small_engine() -> PluginEngine {
    PluginEngine::new(EngineConfig {
        fuel: 50_000_000,
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

fn settings(entries: &[(&str, PluginSettings)]) -> RegistryConfig {
    RegistryConfig { plugins: entries.iter().map(|(n, s)| ((*n).to_string(), s.clone())).collect() }
}

fn mk_configmap(fault: Option<&str>) -> Value {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}, "data": {"k": "v"}});
    if let Some(f) = fault {
        cm["metadata"]["annotations"] = json!({"downsync.dev/fault": f});
    }
    cm
}

const BUILTINS: &[(&str, &str)] = &[
    ("downsync-plugin-service", "plugins/service/fixtures"),
    ("downsync-plugin-persistent-volume", "plugins/persistent-volume/fixtures"),
    ("downsync-plugin-immutable-config", "plugins/immutable-config/fixtures"),
    ("downsync-plugin-service-account", "plugins/service-account/fixtures"),
    ("downsync-example-hpa-replicas", "examples/plugins/hpa-replicas/fixtures"),
];

#[test]
fn every_builtin_plugin_passes_its_fixtures_through_the_host() {
    let engine = small_engine();
    for (crate_name, dir) in BUILTINS {
        let plugin = load(&engine, crate_name);
        let cases = fixtures::load_dir(&repo_root().join(dir)).expect("fixtures load");
        assert!(cases.len() >= 2, "{crate_name} ships at least two fixtures");
        let failures: Vec<String> = fixtures::run_all(&plugin, &cases)
            .into_iter()
            .filter_map(|o| o.failure.map(|f| format!("{crate_name}/{}: {f}", o.name)))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn a_fixture_with_a_wrong_expectation_fails_with_a_readable_diff() {
    let engine = small_engine();
    let plugin = load(&engine, "downsync-plugin-service");
    let mut case =
        fixtures::load_case(&repo_root().join("plugins/service/fixtures/nodeport-kept")).expect("case loads");
    if let fixtures::Expected::Object(obj) = &mut case.expected {
        obj["spec"]["clusterIP"] = json!("10.96.0.99");
    }
    let failure = fixtures::run(&plugin, &case).expect_err("the case must fail");
    assert!(failure.contains("~ /spec/clusterIP: expected \"10.96.0.99\", got \"10.96.0.17\""), "{failure}");
}

#[test]
fn the_builtins_compose_into_one_registry_serving_the_rules() {
    let engine = small_engine();
    let plugins: Vec<Plugin> = BUILTINS.iter().map(|(c, _)| load(&engine, c)).collect();
    let digests: Vec<String> = plugins.iter().map(|p| format!("{}@{}", p.name(), p.digest())).collect();
    let set = PluginSet::new(plugins, &RegistryConfig::default()).expect("no overlaps among the built-ins");
    let registry = PluginRegistry::new(set, Metrics::default());

    let mut want_fp = digests.clone();
    want_fp.sort();
    assert_eq!(registry.fingerprint(), want_fp.join(","));

    let existing = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
        "spec": {"type": "NodePort", "clusterIP": "10.0.0.3", "ports": [{"port": 80, "nodePort": 30001}]}});
    let desired = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
    let RuleDecision::Apply(out) = registry.preserve(&existing, desired).expect("preserve") else {
        panic!("expected apply")
    };
    assert_eq!(out["spec"]["clusterIP"], "10.0.0.3");
    assert_eq!(out["spec"]["ports"][0]["nodePort"], 30001);
    assert_eq!(registry.metrics().calls("service", "preserve"), 1);
    assert_eq!(registry.metrics().calls("service-account", "preserve"), 0, "only plugins of the kind are called");
    assert!(registry.metrics().fuel("service") > 0);

    let ignored = registry.ignore_paths("", "Service").expect("ignore paths");
    assert!(ignored.contains(&"/spec/ports/*/nodePort".to_string()), "{ignored:?}");
    assert_eq!(registry.ignore_paths("", "Service").expect("cached"), ignored);
    assert_eq!(registry.metrics().calls("service", "ignore-paths"), 1, "answers are cached per snapshot");

    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}, "immutable": true, "data": {"a": "1"}});
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}, "immutable": true, "data": {"a": "2"}});
    assert!(matches!(registry.preserve(&live, changed), Ok(RuleDecision::Recreate(_))));
}

#[test]
fn overlapping_scopes_are_refused_at_load_naming_both_plugins_and_patterns() {
    let engine = small_engine();
    let plugins = vec![load(&engine, "downsync-plugin-service"), load(&engine, "downsync-plugin-testing-overlap")];
    let err = PluginSet::new(plugins, &RegistryConfig::default()).expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Overlap { .. }), "{msg}");
    assert!(msg.contains("overlap") && msg.contains("service") && msg.contains("Service"), "{msg}");
    assert!(msg.contains("\"/spec/ports/0\"") && msg.contains("\"/spec/ports/*/nodePort\""), "{msg}");
}

#[test]
fn plugins_chain_by_priority_then_name() {
    let engine = small_engine();
    let plugins = vec![load(&engine, "downsync-plugin-testing-faulty"), load(&engine, "downsync-plugin-minimal")];
    let by_name = PluginSet::new(plugins.clone(), &RegistryConfig::default()).expect("set");
    let order: Vec<&str> = by_name.plugins().iter().map(|l| l.plugin.name()).collect();
    assert_eq!(order, ["faulty", "minimal"]);
    let cfg = settings(&[("minimal", PluginSettings { priority: -5, ..PluginSettings::default() })]);
    let registry = PluginRegistry::new(PluginSet::new(plugins, &cfg).expect("set"), Metrics::default());
    let order: Vec<String> = registry.snapshot().plugins().iter().map(|l| l.plugin.name().to_string()).collect();
    assert_eq!(order, ["minimal", "faulty"]);
    let out = registry.transform(mk_configmap(None)).expect("transform");
    assert_eq!(out["metadata"]["labels"]["faulty"], "ok");
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/minimal"], "seen");
}

/// Each fault, the failure class the registry must count, and a text the error must contain.
const FAULTS: &[(&str, &[CallFailure], &str)] = &[
    ("trap", &[CallFailure::Trap], "(trap)"),
    ("loop", &[CallFailure::OutOfFuel, CallFailure::Deadline], "failed ("),
    ("memory", &[CallFailure::Memory], "(memory)"),
    ("bad-json", &[CallFailure::Contract], "(output)"),
    ("rename", &[CallFailure::Contract], "(identity) at \"/metadata/name\""),
    ("outside", &[CallFailure::Contract], "(scope) at \"/spec\""),
];

#[test]
fn each_fault_gets_its_own_class_fails_closed_and_the_host_survives() {
    let engine = small_engine();
    let registry = PluginRegistry::new(
        PluginSet::new(vec![load(&engine, "downsync-plugin-testing-faulty")], &RegistryConfig::default()).expect("set"),
        Metrics::default(),
    );
    for (fault, classes, text) in FAULTS {
        let before: Vec<u64> = classes.iter().map(|c| registry.metrics().errors("faulty", *c)).collect();
        let err = registry.transform(mk_configmap(Some(fault))).expect_err("fail-closed returns a rule error");
        assert_eq!(err.rule, "faulty");
        assert_eq!(err.object, "ConfigMap n/c");
        assert!(err.message.contains(text), "{fault}: {}", err.message);
        let after: Vec<u64> = classes.iter().map(|c| registry.metrics().errors("faulty", *c)).collect();
        assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>() + 1, "{fault} counted as one of {classes:?}");

        let existing = mk_configmap(None);
        let err = registry.preserve(&existing, mk_configmap(Some(fault))).expect_err("preserve fails closed too");
        assert!(err.message.contains(text), "{fault}: {}", err.message);

        let out = registry.transform(mk_configmap(None)).expect("the next call on the same plugin works");
        assert_eq!(out["metadata"]["labels"]["faulty"], "ok", "after {fault}");
    }
}

#[test]
fn a_fail_open_plugin_is_skipped_and_the_chain_goes_on() {
    let engine = small_engine();
    let cfg = settings(&[(
        "faulty",
        PluginSettings { failure_policy: FailurePolicy::FailOpen, ..PluginSettings::default() },
    )]);
    let plugins = vec![load(&engine, "downsync-plugin-testing-faulty"), load(&engine, "downsync-plugin-minimal")];
    let registry = PluginRegistry::new(PluginSet::new(plugins, &cfg).expect("set"), Metrics::default());
    let out = registry.transform(mk_configmap(Some("trap"))).expect("fail-open does not fail the object");
    assert_eq!(out["metadata"].get("labels"), None, "the failed plugin contributed nothing");
    assert_eq!(out["metadata"]["annotations"]["downsync.dev/minimal"], "seen", "the next plugin still ran");
    assert_eq!(registry.metrics().errors("faulty", CallFailure::Trap), 1);
}

#[test]
fn calls_in_flight_keep_their_snapshot_across_a_swap() {
    let engine = small_engine();
    let registry = PluginRegistry::new(
        PluginSet::new(vec![load(&engine, "downsync-plugin-minimal")], &RegistryConfig::default()).expect("set"),
        Metrics::default(),
    );
    let held = registry.snapshot();
    let old_fp = registry.fingerprint();
    let previous = registry.swap(PluginSet::default());
    assert!(std::sync::Arc::ptr_eq(&held, &previous));
    assert_eq!(held.plugins().len(), 1, "the held snapshot still has its plugin");
    assert_ne!(registry.fingerprint(), old_fp);
    let out = registry.transform(mk_configmap(None)).expect("transform");
    assert_eq!(out["metadata"].get("annotations"), None, "new calls see the new set");
}
