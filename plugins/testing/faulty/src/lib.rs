//! Test component that misbehaves on demand, chosen by the desired object's `downsync.dev/fault` annotation.
//!
//! Faults: `trap` (panics), `loop` (never returns), `memory` (allocates without end),
//! `bad-json` (returns text that is not JSON), `rename` (changes metadata.name),
//! `outside` (writes `/spec/outside`, beyond its scope). Without the annotation it stamps
//! the label `faulty: ok` (its scope), so the host's happy path is exercised too.
//! It implements the WIT exports by hand, because the SDK would never emit invalid JSON.

use downsync_plugin_sdk::{Value, json, pointer};

/// The annotation that picks the fault.
pub const FAULT: &str = "/metadata/annotations/downsync.dev~1fault";

/// What the plugin does to a desired object: Ok(text to return) or Err(message).
pub fn misbehave(desired: &str) -> Result<String, String> {
    let mut obj: Value = serde_json::from_str(desired).map_err(|e| e.to_string())?;
    let fault = pointer::get(&obj, FAULT).and_then(Value::as_str).unwrap_or("").to_string();
    match fault.as_str() {
        "trap" => panic!("faulty plugin asked to trap"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        "bad-json" => Ok("{not json".to_string()),
        "rename" => {
            pointer::set(&mut obj, "/metadata/name", json!("renamed"));
            Ok(obj.to_string())
        }
        "outside" => {
            pointer::set(&mut obj, "/spec/outside", json!(true));
            Ok(obj.to_string())
        }
        _ => {
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod export {
    use downsync_plugin_sdk::bindings::downsync::rules::types::{Decision, KindPattern, PluginInfo};
    use downsync_plugin_sdk::bindings::exports::downsync::rules::rules::Guest;

    struct Faulty;

    impl Guest for Faulty {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: "faulty".into(),
                version: "0.1.0".into(),
                kinds: vec![KindPattern { group: "".into(), kind: "ConfigMap".into() }],
                scope: vec!["/metadata/labels/faulty".into()],
            }
        }
        fn transform(desired: String) -> Result<String, String> {
            super::misbehave(&desired)
        }
        fn preserve(_existing: String, desired: String) -> Result<Decision, String> {
            super::misbehave(&desired).map(Decision::Apply)
        }
        fn ignore_paths(_group: String, _kind: String) -> Vec<String> {
            Vec::new()
        }
    }

    downsync_plugin_sdk::bindings::export_rule_world!(Faulty with_types_in downsync_plugin_sdk::bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_configmap(fault: &str) -> String {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"downsync.dev/fault": fault}}})
            .to_string()
    }

    #[test]
    fn output_faults_produce_what_they_say() {
        assert!(serde_json::from_str::<Value>(&misbehave(&mk_configmap("bad-json")).unwrap()).is_err());
        let renamed: Value = serde_json::from_str(&misbehave(&mk_configmap("rename")).unwrap()).unwrap();
        assert_eq!(renamed["metadata"]["name"], "renamed");
        let ok: Value = serde_json::from_str(&misbehave(&mk_configmap("")).unwrap()).unwrap();
        assert_eq!(ok["metadata"]["labels"]["faulty"], "ok");
    }
}
