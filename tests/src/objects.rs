//! Test objects of mixed kinds (ConfigMap, Service, Deployment), created in bulk, and the
//! downstream view of them that a user would check.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The kinds the end-to-end tests sync, as `--resource` flags.
pub const KINDS: &[&str] = &["v1/ConfigMap", "v1/Service", "apps/v1/Deployment"];

/// The `--resource` arguments for [`KINDS`].
pub fn resource_args() -> Vec<&'static str> {
    KINDS.iter().flat_map(|k| ["--resource", k]).collect()
}

/// The API resource of a kind in [`KINDS`].
pub fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Service" => ApiResource::erase::<Service>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        _ => ApiResource::erase::<ConfigMap>(&()),
    }
}

/// A ConfigMap.
pub fn mk_configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}, "data": data})
}

/// A ClusterIP Service (the cluster allocates the IP).
pub fn mk_service(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
}

/// A Deployment.
pub fn mk_deployment(ns: &str, name: &str, image: &str, replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}})
}

/// `n` objects: 60% ConfigMaps, 20% Services, 20% Deployments, named `obj-<i>`.
pub fn mk_mix(ns: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let name = format!("obj-{i:05}");
            match i % 5 {
                0 => mk_service(ns, &name, 80),
                1 => mk_deployment(ns, &name, "nginx:1.27", 1),
                _ => mk_configmap(ns, &name, json!({"index": i.to_string()})),
            }
        })
        .collect()
}

/// `kind` and `name` of an object.
pub fn kind_name(obj: &Value) -> (String, String) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    (s("/kind"), s("/metadata/name"))
}

fn dynamic_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &api_resource(kind))
}

/// Creates the objects in namespace `ns`, 16 at a time.
pub async fn create_all(client: &Client, ns: &str, objects: Vec<Value>) -> Result<()> {
    futures::stream::iter(objects)
        .map(|obj| async move {
            let (kind, name) = kind_name(&obj);
            let dynamic: DynamicObject = serde_json::from_value(obj)?;
            dynamic_api(client, ns, &kind)
                .create(&PostParams::default(), &dynamic)
                .await
                .with_context(|| format!("creating {kind} {ns}/{name}"))?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Every object of [`KINDS`] in `ns` that `target`'s downsync owns, by (kind, name), as JSON
/// with apiVersion and kind set.
pub async fn owned(client: &Client, ns: &str, target: &str) -> Result<BTreeMap<(String, String), Value>> {
    list(client, ns, &ListParams::default().labels(&format!("downsync.dev/target={target}"))).await
}

/// Every object of [`KINDS`] in `ns`, by (kind, name).
pub async fn all_objects(client: &Client, ns: &str) -> Result<BTreeMap<(String, String), Value>> {
    list(client, ns, &ListParams::default()).await
}

/// Whether downstream holds exactly the upstream objects of `ns` (owned by `target`), each
/// with matching content.
pub async fn converged(upstream: &Client, downstream: &Client, ns: &str, target: &str) -> Result<bool> {
    let up = all_objects(upstream, ns).await?;
    // The namespace's own kube-root-ca.crt ConfigMap is made by each cluster, not synced.
    let up: BTreeMap<_, _> = up.into_iter().filter(|((_, name), _)| name != "kube-root-ca.crt").collect();
    let down = owned(downstream, ns, target).await?;
    Ok(up.len() == down.len() && up.iter().all(|(k, u)| down.get(k).is_some_and(|d| content_matches(u, d))))
}

async fn list(client: &Client, ns: &str, lp: &ListParams) -> Result<BTreeMap<(String, String), Value>> {
    let mut out = BTreeMap::new();
    for kind in ["ConfigMap", "Service", "Deployment"] {
        let ar = api_resource(kind);
        for o in dynamic_api(client, ns, kind).list(lp).await?.items {
            let mut v = serde_json::to_value(&o)?;
            v["apiVersion"] = json!(ar.api_version);
            v["kind"] = json!(kind);
            out.insert((kind.to_string(), o.metadata.name.clone().unwrap_or_default()), v);
        }
    }
    Ok(out)
}

/// Every object of [`KINDS`] in `ns` (owned or not), by (kind, name): their resourceVersions.
pub async fn resource_versions(client: &Client, ns: &str) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    for kind in ["ConfigMap", "Service", "Deployment"] {
        for o in dynamic_api(client, ns, kind).list(&ListParams::default()).await?.items {
            out.insert(
                (kind.to_string(), o.metadata.name.clone().unwrap_or_default()),
                o.metadata.resource_version.clone().unwrap_or_default(),
            );
        }
    }
    Ok(out)
}

/// Whether the synced content of a downstream copy matches its upstream object: ConfigMap
/// data, the Service's ports and selector, the Deployment's replicas and image.
pub fn content_matches(upstream: &Value, downstream: &Value) -> bool {
    let pick = |v: &Value| -> Value {
        match v["kind"].as_str() {
            Some("ConfigMap") => v["data"].clone(),
            Some("Service") => json!([v["spec"]["selector"], v["spec"]["ports"][0]["port"]]),
            Some("Deployment") => {
                json!([v["spec"]["replicas"], v["spec"]["template"]["spec"]["containers"][0]["image"]])
            }
            _ => Value::Null,
        }
    };
    pick(upstream) == pick(downstream)
        && upstream["metadata"]["labels"]["app"] == downstream["metadata"]["labels"]["app"]
}

/// The annotation the `stamp` test plugin writes on the objects it transforms.
pub const STAMP: &str = "bench.downsync.dev/stamp";

/// The `cm-*` ConfigMaps of `ns` by name: their [`STAMP`] (if any) and resourceVersion.
pub async fn stamps(client: &Client, ns: &str) -> Result<BTreeMap<String, (Option<String>, String)>> {
    let list = Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|c| c.metadata.name.as_deref().is_some_and(|n| n.starts_with("cm-")))
        .map(|c| {
            let stamp = c.metadata.annotations.as_ref().and_then(|a| a.get(STAMP).cloned());
            (c.metadata.name.unwrap_or_default(), (stamp, c.metadata.resource_version.unwrap_or_default()))
        })
        .collect())
}

/// Whether `ns` holds exactly `n` `cm-*` ConfigMaps, each stamped `stamp`.
pub async fn all_stamped(client: &Client, ns: &str, n: usize, stamp: &str) -> Result<bool> {
    let s = stamps(client, ns).await?;
    Ok(s.len() == n && s.values().all(|(v, _)| v.as_deref() == Some(stamp)))
}
