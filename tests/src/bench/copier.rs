//! The naive copier: the floor any syncer pays. It lists upstream and creates each object downstream, with no rules.
//!
//! Each object is reduced to name, namespace (mapped), labels and annotations plus `spec` or
//! `data`; a Service loses its upstream-allocated `clusterIP(s)`, which belong to the other
//! cluster. Creates run `concurrency` at a time, like downsync's workers.

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use kube::api::{DynamicObject, ListParams, PostParams};
use serde_json::{Map, Value, json};

use super::objects::{self, Kind, RUN_LABEL};

/// The downstream form of an upstream object: identity, labels, annotations and content only.
pub fn strip(obj: &Value, namespace: &str) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null));
    meta.insert("namespace".into(), json!(namespace));
    for field in ["labels", "annotations"] {
        if let Some(v) = obj.pointer(&format!("/metadata/{field}")) {
            meta.insert(field.into(), v.clone());
        }
    }
    let mut out = json!({"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta});
    for field in ["spec", "data", "binaryData", "immutable"] {
        if let Some(v) = obj.get(field) {
            out[field] = v.clone();
        }
    }
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut)
        && obj.get("kind").and_then(Value::as_str) == Some("Service")
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    out
}

/// Copies every object of run `run` in `namespaces` from `upstream` to `downstream`,
/// namespace `ns` going to `map(ns)`. Returns how many objects were created.
pub async fn copy(
    upstream: &Client,
    downstream: &Client,
    namespaces: &[String],
    run: &str,
    map: impl Fn(&str) -> String,
    concurrency: usize,
) -> Result<usize> {
    let targets: Vec<String> = namespaces.iter().map(|n| map(n)).collect();
    objects::create_namespaces(downstream, &targets, run).await?;
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    let mut work = Vec::new();
    for ns in namespaces {
        for kind in Kind::ALL {
            let ar = kind.api_resource();
            for obj in objects::api(upstream, kind, Some(ns)).list(&lp).await?.items {
                let mut v = serde_json::to_value(&obj)?;
                v["apiVersion"] = json!(ar.api_version);
                v["kind"] = json!(kind.name());
                work.push((kind, map(ns), strip(&v, &map(ns))));
            }
        }
    }
    let count = work.len();
    stream::iter(work)
        .map(|(kind, ns, v)| async move {
            let obj: DynamicObject = serde_json::from_value(v)?;
            objects::api(downstream, kind, Some(&ns)).create(&PostParams::default(), &obj).await.with_context(
                || format!("copying {} {ns}/{}", kind.name(), obj.metadata.name.as_deref().unwrap_or("")),
            )?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_identity_labels_and_content_only() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "up", "uid": "u", "resourceVersion": "9", "labels": {"a": "b"},
                         "managedFields": []},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}},
        });
        assert_eq!(
            strip(&svc, "down"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "down", "labels": {"a": "b"}},
                   "spec": {"ports": [{"port": 80}]}})
        );
    }
}
