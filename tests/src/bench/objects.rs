//! The benchmark's objects: a ConfigMap, Service and Deployment mix over a few namespaces, the fingerprint that says an object is "correct", and bounded-concurrency writes.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The label every benchmark object carries: the run it belongs to.
pub const RUN_LABEL: &str = "bench.downsync.dev/run";

/// The kinds of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// v1 ConfigMap.
    ConfigMap,
    /// v1 Service (type ClusterIP: the downstream apiserver allocates its IP).
    Service,
    /// apps/v1 Deployment.
    Deployment,
}

impl Kind {
    /// Every kind of the mix, in object-index order.
    pub const ALL: [Kind; 3] = [Kind::ConfigMap, Kind::Service, Kind::Deployment];

    /// The kind of object `i`.
    pub fn of(i: usize) -> Self {
        Self::ALL[i % 3]
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::Deployment => "Deployment",
        }
    }

    /// `API_VERSION/KIND`, as `downsync run --resource` takes it.
    pub fn resource_flag(self) -> &'static str {
        match self {
            Kind::ConfigMap => "v1/ConfigMap",
            Kind::Service => "v1/Service",
            Kind::Deployment => "apps/v1/Deployment",
        }
    }

    /// The kube-rs API resource.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// An object's identity across both sides: kind, namespace, name.
pub type Key = (Kind, String, String);

/// The objects of one run: `n` of them, spread round-robin over `namespaces`.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The run id, the value of [`RUN_LABEL`].
    pub run: String,
    /// Upstream namespaces.
    pub namespaces: Vec<String>,
    /// How many objects.
    pub n: usize,
}

impl Workload {
    /// A workload of `n` objects over `namespaces` namespaces named `PREFIX-RUN-i`.
    pub fn new(prefix: &str, run: &str, namespaces: usize, n: usize) -> Self {
        Self { run: run.into(), namespaces: (0..namespaces.max(1)).map(|i| format!("{prefix}-{run}-{i}")).collect(), n }
    }

    /// Object `i` at revision `rev` (0 when created; the update wave makes revision 1).
    pub fn object(&self, i: usize, rev: u32) -> Value {
        let ns = &self.namespaces[i % self.namespaces.len()];
        let labels = json!({RUN_LABEL: self.run, "app.kubernetes.io/name": "downsync-bench"});
        let app = format!("bench-{i}");
        match Kind::of(i) {
            Kind::ConfigMap => json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i:05}"), "namespace": ns, "labels": labels},
                "data": {"index": i.to_string(), "rev": rev.to_string(), "payload": payload(i)},
            }),
            Kind::Service => {
                let mut selector = json!({"app": app});
                if rev > 0 {
                    selector["rev"] = json!(rev.to_string());
                }
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i:05}"), "namespace": ns, "labels": labels},
                    "spec": {"type": "ClusterIP", "selector": selector,
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
                })
            }
            Kind::Deployment => {
                let mut template_meta = json!({"labels": {"app": app}});
                if rev > 0 {
                    template_meta["annotations"] = json!({"bench.downsync.dev/rev": rev.to_string()});
                }
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": format!("dep-{i:05}"), "namespace": ns, "labels": labels},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                             "template": {"metadata": template_meta, "spec": {"containers": [{
                                 "name": "app", "image": "registry.invalid/downsync-bench:1",
                                 "ports": [{"containerPort": 8080}],
                                 "env": [{"name": "INDEX", "value": i.to_string()}]}]}}},
                })
            }
        }
    }

    /// The merge patch that turns object `i` into revision `rev`.
    pub fn patch(&self, i: usize, rev: u32) -> Value {
        let rev = rev.to_string();
        match Kind::of(i) {
            Kind::ConfigMap => json!({"data": {"rev": rev}}),
            Kind::Service => json!({"spec": {"selector": {"rev": rev}}}),
            Kind::Deployment => {
                json!({"spec": {"template": {"metadata": {"annotations": {"bench.downsync.dev/rev": rev}}}}})
            }
        }
    }

    /// What must be downstream: fingerprint by key, with upstream namespaces mapped by `ns`,
    /// and objects whose index passes `changed` at revision `rev` (the others at 0).
    pub fn expected(
        &self,
        ns: impl Fn(&str) -> String,
        changed: impl Fn(usize) -> bool,
        rev: u32,
    ) -> HashMap<Key, Value> {
        (0..self.n)
            .map(|i| {
                let obj = self.object(i, if changed(i) { rev } else { 0 });
                let key = key_of(&obj).map(|(k, n, name)| (k, ns(&n), name));
                (key, fingerprint(&obj))
            })
            .filter_map(|(k, f)| Some((k?, f)))
            .collect()
    }
}

/// A deterministic 256-byte payload, so ConfigMaps weigh something.
fn payload(i: usize) -> String {
    let seed = format!("{i:08x}");
    seed.repeat(32)
}

/// The key of an object, if it is of the mix.
pub fn key_of(obj: &Value) -> Option<Key> {
    let kind = Kind::from_name(obj.get("kind")?.as_str()?)?;
    let ns = obj.pointer("/metadata/namespace")?.as_str()?.to_string();
    let name = obj.pointer("/metadata/name")?.as_str()?.to_string();
    Some((kind, ns, name))
}

/// What makes an object "correct" downstream: the fields the upstream object sets, with the
/// apiserver's defaults filled in, and nothing the downstream cluster adds (allocated IPs,
/// defaults of other fields, downsync's stamps).
pub fn fingerprint(obj: &Value) -> Value {
    let at = |p: &str| obj.pointer(p).cloned().unwrap_or(Value::Null);
    let or_empty = |v: Value| if v.is_null() { json!({}) } else { v };
    match obj.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => json!({"data": or_empty(at("/data"))}),
        Some("Service") => {
            let ports: Vec<Value> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            json!({
                                "name": p.get("name"), "port": p.get("port"), "targetPort": p.get("targetPort"),
                                "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            json!({"type": ty, "selector": or_empty(at("/spec/selector")), "ports": ports})
        }
        Some("Deployment") => {
            let containers: Vec<Value> = obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| json!({"name": c.get("name"), "image": c.get("image"), "env": c.get("env")}))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1)),
                "selector": at("/spec/selector"),
                "labels": or_empty(at("/spec/template/metadata/labels")),
                "annotations": or_empty(at("/spec/template/metadata/annotations")),
                "containers": containers,
            })
        }
        _ => Value::Null,
    }
}

/// A dynamic API for a kind in a namespace (or all namespaces).
pub fn api(client: &Client, kind: Kind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Creates the namespaces (an existing one is fine), labelled with the run.
pub async fn create_namespaces(client: &Client, names: &[String], run: &str) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": {RUN_LABEL: run}}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
    }
    Ok(())
}

/// Deletes the namespaces and waits until they are gone (their objects with them).
pub async fn delete_namespaces(client: &Client, names: &[String], timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    for name in names {
        while api.get_opt(name).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                bail!("namespace {name} still exists after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Creates every object of the workload upstream, `concurrency` at a time.
pub async fn create_all(client: &Client, w: &Workload, concurrency: usize) -> Result<()> {
    create_namespaces(client, &w.namespaces, &w.run).await?;
    stream::iter(0..w.n)
        .map(|i| async move {
            let obj: DynamicObject = serde_json::from_value(w.object(i, 0))?;
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            api(client, Kind::of(i), Some(&ns)).create(&PostParams::default(), &obj).await.with_context(|| {
                format!("creating {} {ns}/{}", Kind::of(i).name(), obj.metadata.name.as_deref().unwrap_or(""))
            })?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Patches the objects whose index passes `changed` to revision `rev`, `concurrency` at a time.
/// Returns how many were patched.
pub async fn patch_some(
    client: &Client,
    w: &Workload,
    changed: impl Fn(usize) -> bool,
    rev: u32,
    concurrency: usize,
) -> Result<usize> {
    let picked: Vec<usize> = (0..w.n).filter(|i| changed(*i)).collect();
    let count = picked.len();
    stream::iter(picked)
        .map(|i| async move {
            let obj = w.object(i, rev);
            let (_, ns, name) = key_of(&obj).context("object without a key")?;
            api(client, Kind::of(i), Some(&ns))
                .patch(&name, &PatchParams::default(), &Patch::Merge(w.patch(i, rev)))
                .await
                .with_context(|| format!("patching {} {ns}/{name}", Kind::of(i).name()))?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}

/// Lists every object of the run in `namespaces`, all kinds, as JSON.
pub async fn list_run(client: &Client, namespaces: &[String], run: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    for ns in namespaces {
        for kind in Kind::ALL {
            for obj in api(client, kind, Some(ns)).list(&lp).await?.items {
                let mut v = serde_json::to_value(&obj)?;
                v["apiVersion"] = json!(kind.api_resource().api_version);
                v["kind"] = json!(kind.name());
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_cycles_through_the_kinds_and_namespaces() {
        let w = Workload::new("bench", "r1", 4, 6);
        let keys: Vec<Key> = (0..6).filter_map(|i| key_of(&w.object(i, 0))).collect();
        assert_eq!(keys[0], (Kind::ConfigMap, "bench-r1-0".into(), "cm-00000".into()));
        assert_eq!(keys[4], (Kind::Service, "bench-r1-0".into(), "svc-00004".into()));
        assert_eq!(keys[5], (Kind::Deployment, "bench-r1-1".into(), "dep-00005".into()));
    }

    #[test]
    fn fingerprints_ignore_what_the_apiserver_adds() {
        let w = Workload::new("bench", "r1", 1, 3);
        let mut svc = w.object(1, 0);
        svc["spec"]["clusterIP"] = json!("10.96.0.10");
        svc["spec"]["ports"][0].as_object_mut().map(|p| p.remove("protocol"));
        svc["metadata"]["labels"]["downsync.dev/managed-by"] = json!("downsync");
        assert_eq!(fingerprint(&svc), fingerprint(&w.object(1, 0)));
        let mut dep = w.object(2, 0);
        dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = json!("/dev/termination-log");
        assert_eq!(fingerprint(&dep), fingerprint(&w.object(2, 0)));
    }

    #[test]
    fn the_update_wave_changes_every_kinds_fingerprint() {
        let w = Workload::new("bench", "r1", 1, 3);
        for i in 0..3 {
            assert_ne!(fingerprint(&w.object(i, 0)), fingerprint(&w.object(i, 1)), "object {i}");
            let mut patched = w.object(i, 0);
            json_merge(&mut patched, &w.patch(i, 1));
            assert_eq!(fingerprint(&patched), fingerprint(&w.object(i, 1)), "object {i}");
        }
    }

    fn json_merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    #[test]
    fn expected_maps_namespaces_and_picks_revisions() {
        let w = Workload::new("bench", "r1", 2, 4);
        let exp = w.expected(|ns| format!("copy-{ns}"), |i| i == 0, 1);
        assert_eq!(exp.len(), 4);
        let cm = &exp[&(Kind::ConfigMap, "copy-bench-r1-0".into(), "cm-00000".into())];
        assert_eq!(cm["data"]["rev"], "1");
        let cm3 = &exp[&(Kind::ConfigMap, "copy-bench-r1-1".into(), "cm-00003".into())];
        assert_eq!(cm3["data"]["rev"], "0");
    }
}
