//! The sidecar manifests in examples/sidecar: every document is accepted by a real API server
//! (server-side dry run), downsync is a native sidecar (an init container that keeps running)
//! whose mounts provide every path its config names, the downstream RBAC covers what the config
//! syncs, and the pod passes the restricted Pod Security Standard.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use downsync_tests::manifests::{allows, metrics_port, plugins_config_map, probes_port, resolve, source_of};
use downsync_tests::{TEST_LABEL, TestEnv, clusters, eventually, repo_root};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

/// The sidecar's container name, in the pod's `initContainers`.
const SIDECAR: &str = "downsync";

fn sidecar_dir() -> PathBuf {
    repo_root().join("examples/sidecar")
}

/// Every YAML document of every manifest of examples/sidecar (kustomization.yaml aside), with
/// its file name.
fn all_docs() -> Result<Vec<(String, Value)>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(sidecar_dir())?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"));
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let text = std::fs::read_to_string(&path)?;
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de).with_context(|| format!("{file}: document {} does not parse", i + 1))?;
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in {}", sidecar_dir().display()))
}

/// The pod spec of the Deployment, and its sidecar container.
fn pod(docs: &[(String, Value)]) -> Result<(&Value, &Value)> {
    let deployment =
        docs.iter().map(|(_, v)| v).find(|v| v["kind"] == "Deployment").context("deployment.yaml: no Deployment")?;
    let spec = deployment.pointer("/spec/template/spec").context("no pod template spec")?;
    let sidecar = spec["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == SIDECAR))
        .with_context(|| format!("no init container {SIDECAR}"))?;
    Ok((spec, sidecar))
}

/// The RunConfig the sidecar reads.
fn run_config(docs: &[(String, Value)]) -> Result<Value> {
    let cm = find(docs, "ConfigMap", "downsync-config")?;
    let text = cm.pointer("/data/config.yaml").and_then(Value::as_str).context("no data key config.yaml")?;
    serde_yaml_ng::from_str(text).context("the RunConfig in config.yaml does not parse")
}

async fn api_for(client: &Client, doc: &Value) -> Result<Api<DynamicObject>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (ar, caps) = resolve(client, doc["apiVersion"].as_str().unwrap_or_default(), kind).await?;
    Ok(match (caps.scope, doc.pointer("/metadata/namespace").and_then(Value::as_str)) {
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => bail!("namespaced {kind} without metadata.namespace"),
    })
}

/// A server-side dry-run create; an object that exists already is checked with a dry-run
/// server-side apply instead. `Err` holds the API's message.
async fn dry_run(client: &Client, doc: &Value) -> Result<()> {
    let api = api_for(client, doc).await?;
    let obj: DynamicObject = serde_json::from_value(doc.clone())?;
    match api.create(&PostParams { dry_run: true, ..PostParams::default() }, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let params = PatchParams::apply("downsync-sidecar-manifests-test").force().dry_run();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            api.patch(name, &params, &Patch::Apply(&obj)).await?;
            Ok(())
        }
        Err(kube::Error::Api(status)) => bail!("{} ({}, {})", status.message, status.reason, status.code),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn every_sidecar_manifest_is_accepted_by_the_api_server_in_a_server_side_dry_run() -> Result<()> {
    let downstream = clusters()?.downstream.client().await?;
    let docs = all_docs()?;
    let ns_doc = docs.iter().map(|(_, v)| v).find(|v| v["kind"] == "Namespace").context("no Namespace")?;
    let ns_name = ns_doc["metadata"]["name"].as_str().context("a namespace without a name")?.to_string();
    let mut failures = Vec::new();
    // The namespace first, while it may not exist yet: then its create itself is checked.
    if let Err(e) = dry_run(&downstream, ns_doc).await {
        failures.push(format!("namespace.yaml: {e:#}"));
    }
    // The namespaced documents need the namespace for real: created, labelled as a test
    // namespace, unless it is there already (an existing cluster), and deleted again.
    let namespaces: Api<Namespace> = Api::all(downstream.clone());
    eventually("an earlier namespace to finish terminating", Duration::from_secs(120), || async {
        Ok(namespaces.get_opt(&ns_name).await?.is_none_or(|ns| ns.metadata.deletion_timestamp.is_none()).then_some(()))
    })
    .await?;
    let created = if namespaces.get_opt(&ns_name).await?.is_none() {
        let mut ns: Namespace = serde_json::from_value(ns_doc.clone())?;
        ns.metadata.labels.get_or_insert_default().insert(TEST_LABEL.into(), "true".into());
        namespaces.create(&PostParams::default(), &ns).await?;
        true
    } else {
        false
    };
    for (file, doc) in docs.iter().filter(|(_, v)| v["kind"] != "Namespace") {
        if let Err(e) = dry_run(&downstream, doc).await {
            failures.push(format!("{file}: {} {}: {e:#}", doc["kind"], doc["metadata"]["name"]));
        }
    }
    if created {
        namespaces.delete(&ns_name, &DeleteParams::background()).await?;
    }
    assert!(docs.len() >= 8, "expected the namespace, SA, RBAC, ConfigMaps and Deployment: {docs:#?}");
    assert!(failures.is_empty(), "the API server refused these manifests:\n  {}", failures.join("\n  "));
    Ok(())
}

#[test]
fn the_kustomization_lists_every_sidecar_manifest() -> Result<()> {
    let text = std::fs::read_to_string(sidecar_dir().join("kustomization.yaml"))?;
    let kustomization: Value = serde_yaml_ng::from_str(&text)?;
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .context("no resources list")?
        .iter()
        .filter_map(|r| r.as_str().map(String::from))
        .collect();
    let files: BTreeSet<String> = all_docs()?.into_iter().map(|(file, _)| file).collect();
    assert_eq!(listed, files, "kustomization.yaml's resources must be exactly the manifests");
    Ok(())
}

#[test]
fn downsync_is_a_native_sidecar_whose_mounts_and_ports_match_its_config() -> Result<()> {
    let docs = all_docs()?;
    let (spec, sidecar) = pod(&docs)?;
    assert_eq!(sidecar["restartPolicy"], "Always", "an init container without restartPolicy Always is no sidecar");
    let apps = spec["containers"].as_array().context("no application container")?;
    assert!(!apps.is_empty() && apps.iter().all(|c| c["name"] != SIDECAR), "an application container next to it");

    let args: Vec<&str> = sidecar["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(args.first(), Some(&"run"), "{args:?}");
    let config_path = args.iter().skip_while(|a| **a != "--config").nth(1).context("no --config argument")?;
    assert_eq!(
        source_of(spec, sidecar, config_path)?,
        ("configMap".into(), "downsync-config".into(), "config.yaml".into()),
        "--config {config_path}"
    );
    let config = run_config(&docs)?;

    let kubeconfig =
        config.pointer("/upstream/kubeconfig").and_then(Value::as_str).context("no upstream.kubeconfig")?;
    let (kind, secret, key) = source_of(spec, sidecar, kubeconfig)?;
    assert_eq!((kind.as_str(), secret.as_str()), ("secret", "downsync-upstream-kubeconfig"), "{kubeconfig}");
    let deployment_yaml = std::fs::read_to_string(sidecar_dir().join("deployment.yaml"))?;
    assert!(
        deployment_yaml.contains(&format!("create secret generic {secret}"))
            && deployment_yaml.contains(&format!("--from-file={key}=")),
        "deployment.yaml must say how to create Secret {secret} with key {key}"
    );
    assert!(config.pointer("/downstream/kubeconfig").is_none(), "the downstream should be in-cluster");
    // The upstream credentials stay with the sidecar.
    for app in apps {
        assert!(source_of(spec, app, kubeconfig).is_err(), "container {} sees the upstream kubeconfig", app["name"]);
    }

    // pluginsDir: the whole ConfigMap downsync-plugins, as in examples/deploy (a subPath mount
    // would never see plugin updates).
    let plugins_dir = config["pluginsDir"].as_str().context("no pluginsDir")?;
    assert_eq!(plugins_dir, "/plugins");
    let name = plugins_config_map(spec, sidecar, plugins_dir)?;
    assert_eq!(name, "downsync-plugins");
    find(&docs, "ConfigMap", &name)?;

    // metricsAddr's port is the sidecar's port `metrics`; its probes use the next one, port
    // `probes`; /readyz at start.
    let port = metrics_port(&config, sidecar)?;
    probes_port(sidecar, port)?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "probes", "{probe}");
    }
    Ok(())
}

#[tokio::test]
async fn the_sidecar_rbac_covers_every_resource_in_its_config() -> Result<()> {
    let downstream = clusters()?.downstream.client().await?;
    let docs = all_docs()?;
    let config = run_config(&docs)?;
    let role = find(&docs, "ClusterRole", "downsync-sidecar")?;
    let rules = role["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut missing = Vec::new();
    for entry in config["resources"].as_array().context("no resources")? {
        let (api_version, kind) = (entry["apiVersion"].as_str(), entry["kind"].as_str());
        let (ar, _) = resolve(&downstream, api_version.unwrap_or_default(), kind.unwrap_or_default()).await?;
        for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
            if !allows(rules, &ar.group, &ar.plural, verb) {
                missing.push(format!("{verb} {}", ar.plural));
            }
        }
    }
    assert!(missing.is_empty(), "rbac-downstream.yaml does not allow: {missing:?}");

    // Every binding binds the ServiceAccount the pod runs as.
    let (spec, _) = pod(&docs)?;
    let sa = find(&docs, "ServiceAccount", spec["serviceAccountName"].as_str().unwrap_or("default"))?;
    let subject =
        json!({"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]});
    let bindings: Vec<&Value> = docs.iter().map(|(_, v)| v).filter(|v| v["kind"] == "ClusterRoleBinding").collect();
    assert!(!bindings.is_empty());
    for binding in bindings {
        let subjects = binding["subjects"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(subjects.contains(&subject), "{} binds {subjects:?}, not {subject}", binding["metadata"]["name"]);
    }
    Ok(())
}

#[tokio::test]
async fn the_sidecar_pod_meets_the_restricted_pod_security_standard() -> Result<()> {
    let docs = all_docs()?;
    let ns = docs.iter().map(|(_, v)| v).find(|v| v["kind"] == "Namespace").context("no Namespace")?;
    let pss: serde_json::Map<String, Value> = ns["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(pss.get("pod-security.kubernetes.io/enforce"), Some(&json!("restricted")), "namespace.yaml");
    let (spec, _) = pod(&docs)?;

    let env = TestEnv::new("sidecar-pss").await?;
    Api::<Namespace>::all(env.downstream.clone())
        .patch(&env.namespace, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": pss}})))
        .await?;
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: spec["serviceAccountName"].as_str().map(String::from), ..ObjectMeta::default() },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(env.downstream.clone(), &env.namespace)
        .create(&PostParams::default(), &sa)
        .await?;
    let pods: Api<Pod> = Api::namespaced(env.downstream.clone(), &env.namespace);
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let mk_pod = |spec: &Value| -> Result<Pod> {
        Ok(serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "syncer"}, "spec": spec}),
        )?)
    };
    let accepted = pods.create(&dry_run, &mk_pod(spec)?).await;
    // The sidecar is checked too: without its securityContext the pod must be refused, or the
    // acceptance above proves nothing about it.
    let mut loose = spec.clone();
    let sidecar = loose["initContainers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == SIDECAR))
        .and_then(Value::as_object_mut)
        .context("no sidecar")?;
    sidecar.remove("securityContext");
    let refused = pods.create(&dry_run, &mk_pod(&loose)?).await;
    env.cleanup().await?;

    if let Err(e) = accepted {
        panic!("the sidecar pod is refused in a namespace enforcing {pss:?}: {e}");
    }
    match refused {
        Err(kube::Error::Api(status)) if status.is_forbidden() && status.message.contains(SIDECAR) => Ok(()),
        other => panic!("a sidecar without a securityContext should be forbidden by Pod Security: {other:?}"),
    }
}
