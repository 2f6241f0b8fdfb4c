//! A real mutating admission policy for the coexistence tests and bench: a
//! MutatingAdmissionPolicy (`admissionregistration.k8s.io/v1`, served by kube-apiserver v1.37)
//! that adds the label `injected: "yes"` and the env var `INJECTED=1` (to the container named
//! `app`) to every Deployment created or updated in one namespace.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

const POLICY: (&str, &str) = ("MutatingAdmissionPolicy", "mutatingadmissionpolicies");
const BINDING: (&str, &str) = ("MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings");

/// The policy's and binding's name for `ns` (they are cluster-scoped).
fn name(ns: &str) -> String {
    format!("inject-{ns}")
}

/// Creates the policy and its binding to `ns`, and waits until a dry-run create in `ns` shows
/// the mutation (the API server's informers must have seen both).
pub async fn create_injecting_policy(down: &Client, ns: &str) -> Result<()> {
    let name = name(ns);
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": POLICY.0, "metadata": {"name": name},
        "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "failurePolicy": "Fail", "reinvocationPolicy": "Never",
            "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                "Object{metadata: Object.metadata{labels: {\"injected\": \"yes\"}}, spec: Object.spec{template: Object.spec.template{spec: Object.spec.template.spec{containers: [Object.spec.template.spec.containers{name: \"app\", env: [Object.spec.template.spec.containers.env{name: \"INJECTED\", value: \"1\"}]}]}}}}"}}]}
    }))?;
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": BINDING.0, "metadata": {"name": name},
        "spec": {"policyName": name,
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}
    }))?;
    let pp = PostParams::default();
    Api::<DynamicObject>::all_with(down.clone(), &resource(POLICY.0, POLICY.1)).create(&pp, &policy).await?;
    Api::<DynamicObject>::all_with(down.clone(), &resource(BINDING.0, BINDING.1)).create(&pp, &binding).await?;
    let probe: Deployment = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "probe"}}, "template": {"metadata": {"labels": {"app": "probe"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}}))?;
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let api = Api::<Deployment>::namespaced(down.clone(), ns);
    let started = Instant::now();
    loop {
        let d = api.create(&dry, &probe).await?;
        if d.metadata.labels.as_ref().is_some_and(|l| l.contains_key("injected")) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the admission policy for {ns} did not take effect in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Deletes the policy and binding of `ns` (a namespace's deletion does not take them); ones
/// already gone are fine.
pub async fn delete_injecting_policy(down: &Client, ns: &str) -> Result<()> {
    for (kind, plural) in [BINDING, POLICY] {
        let api = Api::<DynamicObject>::all_with(down.clone(), &resource(kind, plural));
        match api.delete(&name(ns), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
