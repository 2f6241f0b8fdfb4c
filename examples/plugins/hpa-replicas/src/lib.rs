//! Example rule an operator would write: the downstream autoscaler owns Deployment replicas.
//!
//! With a HorizontalPodAutoscaler in the downstream cluster, `spec.replicas` is the
//! autoscaler's, and writing the upstream value back would fight it. This rule keeps the live
//! `spec.replicas` of every Deployment that already exists downstream (the existing value wins,
//! always — installing the plugin is the opt-in), and tells the differ to ignore
//! `/spec/replicas`. A Deployment created for the first time gets the desired replicas.
//!
//! It is "always" rather than per-object (say, by an annotation) because `ignore-paths` is
//! asked per kind, not per object: a per-object keep with a per-kind ignore would be
//! inconsistent.
//!
//! Build and check it:
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --profile plugin -p downsync-example-hpa-replicas
//! downsync plugin test target/wasm32-wasip2/plugin/downsync_example_hpa_replicas.wasm examples/plugins/hpa-replicas/fixtures
//! ```

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value, pointer};

const REPLICAS: &str = "/spec/replicas";

/// Keeps the autoscaler's replicas.
pub struct HpaReplicas;

impl Rule for HpaReplicas {
    fn describe() -> Info {
        Info::new("hpa-replicas", "0.2.0")
            .stateless() // keeps nothing between calls: runs in a reused instance
            .kind("apps", "Deployment")
            .scope(REPLICAS)
            .hooks(&[Hook::Preserve, Hook::IgnorePaths])
            .reads("/spec/replicas")
    }

    fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
        keep_replicas(&existing, &mut desired)?;
        Ok(Decision::Apply(desired))
    }

    fn ignore_paths(group: &str, kind: &str) -> Vec<String> {
        if group == "apps" && kind == "Deployment" { vec![REPLICAS.to_string()] } else { Vec::new() }
    }
}

/// Puts the live replicas into `desired` (the live value wins).
pub fn keep_replicas(existing: &Value, desired: &mut Value) -> Result<(), String> {
    let Some(live) = pointer::get(existing, REPLICAS).filter(|v| !v.is_null()).cloned() else { return Ok(()) };
    if pointer::get(desired, REPLICAS) != Some(&live) && !pointer::set(desired, REPLICAS, live) {
        return Err("spec is not an object".into());
    }
    Ok(())
}

downsync_plugin_sdk::export_rule!(HpaReplicas);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    fn mk_deployment(replicas: Option<u32>) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "n"}, "spec": {"template": {}}});
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        d
    }

    #[test]
    fn the_live_replicas_win_over_desired() {
        let mut desired = mk_deployment(Some(2));
        keep_replicas(&mk_deployment(Some(7)), &mut desired).unwrap();
        assert_eq!(desired["spec"]["replicas"], 7);
    }

    #[test]
    fn without_live_replicas_the_desired_ones_stay() {
        let mut desired = mk_deployment(Some(2));
        keep_replicas(&mk_deployment(None), &mut desired).unwrap();
        assert_eq!(desired["spec"]["replicas"], 2);
    }

    #[test]
    fn ignore_paths_only_for_deployments() {
        assert_eq!(HpaReplicas::ignore_paths("apps", "Deployment"), ["/spec/replicas"]);
        assert!(HpaReplicas::ignore_paths("apps", "StatefulSet").is_empty());
    }
}
