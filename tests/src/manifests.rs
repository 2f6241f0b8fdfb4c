//! Shared checks of the example manifests (examples/deploy, examples/sidecar) and the Helm
//! chart: reading YAML streams, `kubectl kustomize`, resolving kinds on the real API server,
//! server-side dry runs, what RBAC rules allow, and where a container's files come from.

use std::path::Path;

use anyhow::{Context, Result, bail};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, Scope, pinned_kind};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

/// Every non-empty document of a YAML stream; `what` names it in errors.
pub fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(de).with_context(|| format!("{what}: YAML document {} does not parse", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `kubectl kustomize DIR` (kubectl from PATH: tests/run.sh puts the one it builds there).
pub fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let out =
        std::process::Command::new("kubectl").arg("kustomize").arg(dir).output().context(
            "running `kubectl kustomize` (kubectl must be on PATH; tests/run.sh puts the one it builds there)",
        )?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8(out.stdout)?, &format!("kubectl kustomize {}", dir.display()))
}

/// The API's own words for a failed request.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({}, {})", status.message, status.reason, status.code),
        other => format!("{other}"),
    }
}

/// Sends `doc` as a server-side dry-run create. An object that already exists (on an existing
/// cluster, say) is checked with a dry-run server-side apply as `field_manager` instead, which
/// validates the manifest against it. `Err` holds the API's message.
pub async fn dry_run(client: &Client, doc: &Value, field_manager: &str) -> Result<(), String> {
    let text = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (ar, caps) = resolve(client, text("/apiVersion"), text("/kind")).await.map_err(|e| format!("{e:#}"))?;
    let api: Api<DynamicObject> = match (caps.scope, doc.pointer("/metadata/namespace").and_then(Value::as_str)) {
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => {
            return Err("namespaced, but names no metadata.namespace, so `kubectl apply -f` would put it in \
                        the current namespace"
                .into());
        }
    };
    let obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| format!("not an object: {e}"))?;
    match api.create(&PostParams { dry_run: true, ..PostParams::default() }, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let params = PatchParams::apply(field_manager).force().dry_run();
            api.patch(text("/metadata/name"), &params, &Patch::Apply(&obj)).await.map(drop).map_err(|e| api_message(&e))
        }
        Err(e) => Err(api_message(&e)),
    }
}

/// The resource of a kind, from the API server's discovery.
pub async fn resolve(client: &Client, api_version: &str, kind: &str) -> Result<(ApiResource, ApiCapabilities)> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    pinned_kind(client, &gvk).await.with_context(|| format!("discovering {kind}.{api_version}"))
}

/// What a set of (Cluster)Role rules allows, the way the RBAC authorizer reads them (rules
/// limited to resourceNames do not count: downsync works on every object of a kind).
pub fn allows(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |rule: &Value, field: &str, want: &str| {
        rule[field].as_array().is_some_and(|items| items.iter().any(|i| i == want || i == "*"))
    };
    rules.iter().any(|rule| {
        rule["resourceNames"].as_array().is_none_or(Vec::is_empty)
            && has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
    })
}

/// Which key of which ConfigMap or Secret the pod sees at `path`: `("configMap" | "secret",
/// name, key)`, following the container's volume mounts (subPath and items included).
pub fn source_of(spec: &Value, container: &Value, path: &str) -> Result<(String, String, String)> {
    let mounts = container["volumeMounts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let (mount, rest) = mounts
        .iter()
        .filter_map(|m| {
            let at = m["mountPath"].as_str()?.trim_end_matches('/');
            let rest = if path == at { "" } else { path.strip_prefix(at)?.strip_prefix('/')? };
            Some((m, rest))
        })
        .max_by_key(|(m, _)| m["mountPath"].as_str().map(str::len))
        .with_context(|| format!("deployment.yaml: no volume is mounted at {path}"))?;
    let volume_name = mount["name"].as_str().unwrap_or_default();
    let volume = spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == volume_name))
        .with_context(|| format!("deployment.yaml: volume {volume_name} is mounted but not defined"))?;
    // The path inside the volume.
    let inner = match mount["subPath"].as_str() {
        Some(sub) if rest.is_empty() => sub.to_string(),
        Some(sub) => format!("{sub}/{rest}"),
        None => rest.to_string(),
    };
    let (source_kind, source, name) = if let Some(cm) = volume.get("configMap") {
        ("configMap", cm, cm["name"].as_str())
    } else if let Some(secret) = volume.get("secret") {
        ("secret", secret, secret["secretName"].as_str())
    } else {
        bail!("deployment.yaml: volume {volume_name} at {path} is neither a ConfigMap nor a Secret: {volume}");
    };
    let key = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == inner.as_str())
            .and_then(|i| i["key"].as_str())
            .with_context(|| format!("deployment.yaml: volume {volume_name} projects no item at {inner}"))?
            .to_string(),
        None => inner,
    };
    Ok((source_kind.into(), name.unwrap_or_default().into(), key))
}

/// The ConfigMap that `plugins_dir` comes from in `container`: a whole volume, never a subPath
/// mount, which Kubernetes never updates, so a hot reload would not see new plugins.
pub fn plugins_config_map(spec: &Value, container: &Value, plugins_dir: &str) -> Result<String> {
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == plugins_dir))
        .with_context(|| format!("nothing is mounted at pluginsDir {plugins_dir}"))?;
    if mount.get("subPath").is_some() {
        bail!("the plugins mount at {plugins_dir} uses subPath: it would not be hot-reloaded");
    }
    let (kind, name, _) = source_of(spec, container, &format!("{plugins_dir}/x.wasm"))?;
    if kind != "configMap" {
        bail!("pluginsDir {plugins_dir} comes from a {kind}, not a ConfigMap");
    }
    Ok(name)
}

/// The port of the config's `metricsAddr`, checked to be the container's port named `metrics`.
pub fn metrics_port(config: &Value, container: &Value) -> Result<u64> {
    let port: u64 = config["metricsAddr"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .context("metricsAddr has no port")?;
    let named = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .context("no container port named metrics")?;
    if named["containerPort"] != port {
        bail!("metricsAddr port {port} and the container's metrics port {} differ", named["containerPort"]);
    }
    Ok(port)
}

/// The container's port named `probes`, which must be `metrics_port` + 1 (where downsync
/// serves `/healthz` and `/readyz`).
pub fn probes_port(container: &Value, metrics_port: u64) -> Result<u64> {
    let named = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "probes"))
        .context("no container port named probes")?;
    if named["containerPort"] != metrics_port + 1 {
        bail!("the probes port {} is not the metrics port {metrics_port} + 1", named["containerPort"]);
    }
    Ok(metrics_port + 1)
}
