//! The deployment manifests in examples/deploy: every document is accepted by a real API server
//! (server-side dry run), the RBAC on both sides covers what config.yaml syncs, the pod's volumes
//! provide every path the config names, and the pod passes the restricted Pod Security Standard.
//! The HA variant (examples/deploy-ha, a kustomize overlay rendered with `kubectl kustomize`)
//! is dry-run too, and runs three replicas with Lease RBAC, a budget and a spread. The registry
//! variant (examples/deploy-registry) is dry-run with its example Secrets, mounts every key and
//! credentials file its config names from those Secrets, and its config passes downsync's own
//! checks once those files are in place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use downsync::app::RunConfig;
use downsync_tests::manifests::{
    self, allows, api_message, metrics_port, plugins_config_map, probes_port, resolve, source_of,
};
use downsync_tests::registry::Cosign;
use downsync_tests::{TEST_LABEL, TestEnv, clusters, eventually, repo_root};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

/// The namespace the downstream manifests install into.
const NAMESPACE: &str = "downsync-system";

/// Manifests that go to the upstream cluster; every other one goes downstream.
const UPSTREAM_FILES: &[&str] = &["rbac-upstream.yaml"];

/// The verbs downsync needs downstream on every synced resource.
const DOWNSTREAM_VERBS: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

/// Field manager of the fallback server-side apply dry run.
const FIELD_MANAGER: &str = "downsync-deploy-manifests-test";

/// One YAML document of one manifest file.
#[derive(Debug, Clone)]
struct Doc {
    /// The file name, such as `deployment.yaml`.
    file: String,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
    }

    fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }

    fn namespace(&self) -> Option<&str> {
        self.value.pointer("/metadata/namespace").and_then(Value::as_str)
    }

    fn is_upstream(&self) -> bool {
        UPSTREAM_FILES.contains(&self.file.as_str())
    }

    /// `deployment.yaml: Deployment downsync-system/downsync`, for messages.
    fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}: {} {ns}/{}", self.file, self.kind(), self.name()),
            None => format!("{}: {} {}", self.file, self.kind(), self.name()),
        }
    }
}

fn deploy_dir() -> PathBuf {
    repo_root().join("examples/deploy")
}

/// The `*.yaml` manifests of examples/deploy, sorted, without kustomization.yaml.
fn manifest_files() -> Result<Vec<PathBuf>> {
    let dir = deploy_dir();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every non-empty YAML document of one file.
fn read_docs(path: &Path) -> Result<Vec<Doc>> {
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value =
            Value::deserialize(de).with_context(|| format!("{file}: YAML document {} does not parse", i + 1))?;
        if value.is_null() {
            continue;
        }
        docs.push(Doc { file: file.clone(), value });
    }
    Ok(docs)
}

/// The HA variant, rendered by `kubectl kustomize examples/deploy-ha`, each document marked as
/// coming from `deploy-ha`.
fn ha_docs() -> Result<Vec<Doc>> {
    let docs = manifests::kustomize(&repo_root().join("examples/deploy-ha"))?;
    Ok(docs.into_iter().map(|value| Doc { file: "deploy-ha".into(), value }).collect())
}

fn registry_dir() -> PathBuf {
    repo_root().join("examples/deploy-registry")
}

/// The registry variant, rendered by `kubectl kustomize examples/deploy-registry`.
fn registry_docs() -> Result<Vec<Doc>> {
    let docs = manifests::kustomize(&registry_dir())?;
    Ok(docs.into_iter().map(|value| Doc { file: "deploy-registry".into(), value }).collect())
}

/// The example Secrets of the registry variant (placeholders, not in its kustomization).
fn registry_secrets() -> Result<Vec<Doc>> {
    read_docs(&registry_dir().join("secrets-example.yaml"))
}

fn all_docs() -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for file in manifest_files()? {
        docs.extend(read_docs(&file)?);
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Result<&'a Doc> {
    docs.iter().find(|d| d.kind() == kind && d.name() == name).with_context(|| {
        format!("no {kind} {name} in {} (files: {:?})", deploy_dir().display(), manifest_files().unwrap_or_default())
    })
}

/// The RunConfig held by ConfigMap downsync-config.
fn run_config(docs: &[Doc]) -> Result<Value> {
    let cm = find(docs, "ConfigMap", "downsync-config")?;
    let text = cm
        .value
        .pointer("/data/config.yaml")
        .and_then(Value::as_str)
        .context("config.yaml: no data key config.yaml")?;
    serde_yaml_ng::from_str(text).context("config.yaml: the RunConfig in data.config.yaml does not parse")
}

/// The Deployment's pod spec and its (only) container.
fn pod_spec(docs: &[Doc]) -> Result<(&Value, &Value)> {
    let deployment = find(docs, "Deployment", "downsync")?;
    let spec = deployment.value.pointer("/spec/template/spec").context("deployment.yaml: no pod template spec")?;
    let container = spec.pointer("/containers/0").context("deployment.yaml: no container")?;
    Ok((spec, container))
}

/// Sends `doc` as a server-side dry run (see [`manifests::dry_run`]).
async fn dry_run(client: &Client, doc: &Doc) -> Result<(), String> {
    manifests::dry_run(client, &doc.value, FIELD_MANAGER).await
}

/// Creates the namespace `downsync-system` for real unless it exists, labelled as a test
/// namespace; says whether it did. Waits out a namespace still terminating from an earlier run.
async fn ensure_namespace(client: &Client, labels: &Value) -> Result<bool> {
    let api: Api<Namespace> = Api::all(client.clone());
    eventually("an earlier downsync-system to finish terminating", Duration::from_secs(120), || async {
        Ok(match api.get_opt(NAMESPACE).await? {
            Some(ns) if ns.metadata.deletion_timestamp.is_some() => None,
            _ => Some(()),
        })
    })
    .await?;
    if api.get_opt(NAMESPACE).await?.is_some() {
        return Ok(false);
    }
    let mut labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(labels.clone()).context("namespace.yaml: labels are not strings")?;
    labels.insert(TEST_LABEL.into(), "true".into());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(NAMESPACE.into()), labels: Some(labels), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {NAMESPACE}"))?;
    Ok(true)
}

#[tokio::test]
async fn every_manifest_is_accepted_by_the_api_server_in_a_server_side_dry_run() -> Result<()> {
    let clusters = clusters()?;
    let upstream = clusters.upstream.client().await?;
    let downstream = clusters.downstream.client().await?;
    let docs = all_docs()?;
    assert!(docs.len() >= 9, "expected the namespace, SA, RBAC, ConfigMaps and Deployment; found {docs:#?}");

    let client_for = |doc: &Doc| if doc.is_upstream() { &upstream } else { &downstream };
    let mut failures = Vec::new();
    // The namespaces first, while they may not exist yet: then the create itself is checked.
    let (namespaces, others): (Vec<&Doc>, Vec<&Doc>) = docs.iter().partition(|d| d.kind() == "Namespace");
    for doc in &namespaces {
        if let Err(msg) = dry_run(client_for(doc), doc).await {
            failures.push(format!("{}: {msg}", doc.describe()));
        }
    }

    let ns_doc = find(&docs, "Namespace", NAMESPACE)?;
    let created = ensure_namespace(&downstream, ns_doc.value.pointer("/metadata/labels").unwrap_or(&json!({}))).await?;
    for doc in &others {
        if let Err(msg) = dry_run(client_for(doc), doc).await {
            failures.push(format!("{}: {msg}", doc.describe()));
        }
    }
    // The HA variant: what it adds or changes (the base's other documents were checked above).
    for doc in ha_docs()? {
        let ha_own = matches!(doc.kind(), "Deployment" | "PodDisruptionBudget") || doc.name() == "downsync-leases";
        if ha_own && let Err(msg) = dry_run(&downstream, &doc).await {
            failures.push(format!("{}: {msg}", doc.describe()));
        }
    }
    // The registry variant: its Deployment and config, and the example Secrets (the API server
    // checks that a kubernetes.io/dockerconfigjson Secret holds a docker config).
    let registry = registry_docs()?.into_iter().filter(|d| matches!(d.kind(), "Deployment" | "ConfigMap"));
    for doc in registry.chain(registry_secrets()?) {
        if let Err(msg) = dry_run(&downstream, &doc).await {
            failures.push(format!("{}: {msg}", doc.describe()));
        }
    }
    if created {
        Api::<Namespace>::all(downstream.clone()).delete(NAMESPACE, &DeleteParams::background()).await?;
    }

    assert!(failures.is_empty(), "the API server refused these manifests:\n  {}", failures.join("\n  "));
    Ok(())
}

#[test]
fn the_kustomization_lists_every_downstream_manifest_and_no_upstream_one() -> Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml"))?;
    let kustomization: Value = serde_yaml_ng::from_str(&text)?;
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .context("kustomization.yaml: no resources list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let files = manifest_files()?;
    let downstream: BTreeSet<&str> = files
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
        .filter(|name| !UPSTREAM_FILES.contains(name))
        .collect();
    assert_eq!(listed, downstream, "kustomization.yaml's resources must be exactly the downstream manifests");
    Ok(())
}

fn cluster_role_rules<'a>(docs: &'a [Doc], file: &str) -> Result<&'a [Value]> {
    let role = docs
        .iter()
        .find(|d| d.file == file && d.kind() == "ClusterRole")
        .with_context(|| format!("{file}: no ClusterRole"))?;
    Ok(role.value["rules"].as_array().map(Vec::as_slice).unwrap_or_default())
}

/// The ClusterRoleBinding of `file` binds its ClusterRole; its subjects.
fn bound_subjects<'a>(docs: &'a [Doc], file: &str) -> Result<&'a [Value]> {
    let role = docs.iter().find(|d| d.file == file && d.kind() == "ClusterRole").context("no ClusterRole")?;
    let binding = docs
        .iter()
        .find(|d| d.file == file && d.kind() == "ClusterRoleBinding")
        .with_context(|| format!("{file}: no ClusterRoleBinding"))?;
    assert_eq!(binding.str_at("/roleRef/kind"), "ClusterRole", "{}", binding.describe());
    assert_eq!(binding.str_at("/roleRef/name"), role.name(), "{} must bind {}", binding.describe(), role.describe());
    Ok(binding.value["subjects"].as_array().map(Vec::as_slice).unwrap_or_default())
}

#[tokio::test]
async fn the_rbac_on_both_sides_covers_every_resource_in_the_config() -> Result<()> {
    let clusters = clusters()?;
    let upstream = clusters.upstream.client().await?;
    let downstream = clusters.downstream.client().await?;
    let docs = all_docs()?;
    let config = run_config(&docs)?;
    let resources = config["resources"].as_array().context("config.yaml: no resources")?;
    assert!(!resources.is_empty(), "config.yaml syncs nothing");

    let down_rules = cluster_role_rules(&docs, "rbac-downstream.yaml")?;
    let up_rules = cluster_role_rules(&docs, "rbac-upstream.yaml")?;
    let mut missing = Vec::new();
    let mut need = |file: &str, rules: &[Value], group: &str, resource: &str, verb: &str| {
        if !allows(rules, group, resource, verb) {
            missing.push(format!("{file} does not allow {verb} on {resource} (apiGroup {group:?})"));
        }
    };
    let writes = |what: &str| config["upstreamWrites"].as_array().is_some_and(|w| w.iter().any(|v| v == what));
    let (finalizer, status_upsync) = (writes("finalizer"), writes("status"));
    let mut extra = Vec::new();
    let mut synced = Vec::new();
    for entry in resources {
        let api_version = entry["apiVersion"].as_str().context("config.yaml: a resource without apiVersion")?;
        let kind = entry["kind"].as_str().context("config.yaml: a resource without kind")?;
        let (ar, _) = resolve(&downstream, api_version, kind).await?;
        synced.push((ar.group.clone(), ar.plural.clone()));
        for verb in DOWNSTREAM_VERBS {
            need("rbac-downstream.yaml", down_rules, &ar.group, &ar.plural, verb);
        }
        let (ar, caps) = resolve(&upstream, api_version, kind).await?;
        for verb in ["get", "list", "watch"] {
            need("rbac-upstream.yaml", up_rules, &ar.group, &ar.plural, verb);
        }
        // Writes upstream only for the settings that need them, and only then.
        for verb in ["update", "patch"] {
            match (finalizer, allows(up_rules, &ar.group, &ar.plural, verb)) {
                (true, _) => need("rbac-upstream.yaml", up_rules, &ar.group, &ar.plural, verb),
                (false, true) => extra.push(format!(
                    "rbac-upstream.yaml allows {verb} on {} without finalizer in upstreamWrites",
                    ar.plural
                )),
                (false, false) => {}
            }
        }
        if caps.subresources.iter().any(|(sub, _)| sub.plural == "status") {
            let status = format!("{}/status", ar.plural);
            match (status_upsync, allows(up_rules, &ar.group, &status, "patch")) {
                (true, _) => need("rbac-upstream.yaml", up_rules, &ar.group, &status, "patch"),
                (false, true) => {
                    extra.push(format!("rbac-upstream.yaml allows patch on {status} without status in upstreamWrites"))
                }
                (false, false) => {}
            }
        }
    }
    // No writes downstream on kinds the config does not sync.
    for (group, plural) in [("", "serviceaccounts"), ("", "pods"), ("rbac.authorization.k8s.io", "roles")] {
        if !synced.iter().any(|(g, p)| g == group && p == plural) && allows(down_rules, group, plural, "create") {
            extra.push(format!("rbac-downstream.yaml allows create on {plural}, which config.yaml does not sync"));
        }
    }
    for verb in ["get", "list", "watch", "create"] {
        need("rbac-downstream.yaml", down_rules, "", "namespaces", verb);
    }
    // The example cleans up the namespaces downsync created (its RBAC decides: with `delete`).
    need("rbac-downstream.yaml", down_rules, "", "namespaces", "delete");
    need("rbac-upstream.yaml", up_rules, "", "namespaces", "get");
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            need("rbac-upstream.yaml", up_rules, group, "events", verb);
        }
    }
    assert!(extra.is_empty(), "the RBAC grants more than config.yaml needs:\n  {}", extra.join("\n  "));
    assert!(missing.is_empty(), "the RBAC is behind config.yaml:\n  {}", missing.join("\n  "));

    // The downstream binding names the ServiceAccount the pod runs as.
    let sa = find(&docs, "ServiceAccount", "downsync")?;
    let (spec, _) = pod_spec(&docs)?;
    assert_eq!(spec["serviceAccountName"], sa.name(), "the pod runs as {}", sa.describe());
    let subjects = bound_subjects(&docs, "rbac-downstream.yaml")?;
    let expected = json!({"kind": "ServiceAccount", "name": sa.name(), "namespace": sa.namespace()});
    assert!(subjects.contains(&expected), "rbac-downstream.yaml binds {subjects:?}, not {expected}");
    let subjects = bound_subjects(&docs, "rbac-upstream.yaml")?;
    assert!(subjects.iter().any(|s| s["name"] == "downsync"), "rbac-upstream.yaml binds {subjects:?}");
    Ok(())
}

/// The value following `flag` in `args` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value<'a>(args: &'a [Value], flag: &str) -> Option<&'a str> {
    let args: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag { args.get(i + 1).copied() } else { a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) }
    })
}

#[test]
fn the_pod_mounts_the_config_the_upstream_kubeconfig_and_the_plugins_where_the_config_says() -> Result<()> {
    let docs = all_docs()?;
    let (spec, container) = pod_spec(&docs)?;
    let args = container["args"].as_array().map(Vec::as_slice).unwrap_or_default();
    assert_eq!(args.first().and_then(Value::as_str), Some("run"), "the container runs `downsync run`: {args:?}");

    // --config: a key of a ConfigMap in these manifests, holding a RunConfig.
    let config_path = flag_value(args, "--config").context("deployment.yaml: no --config argument")?;
    let (source_kind, name, key) = source_of(spec, container, config_path)?;
    assert_eq!(source_kind, "configMap", "{config_path} comes from a {source_kind}");
    let cm = find(&docs, "ConfigMap", &name)?;
    assert!(
        cm.value["data"].get(&key).is_some(),
        "{config_path} is key {key} of ConfigMap {name}, which has no such key: {}",
        cm.describe()
    );
    let config = run_config(&docs)?;
    assert_eq!(name, "downsync-config", "the config is read from {}", cm.describe());

    // The upstream kubeconfig: the key the documented `kubectl create secret` makes.
    let kubeconfig =
        config.pointer("/upstream/kubeconfig").and_then(Value::as_str).context("no upstream.kubeconfig")?;
    let (source_kind, secret, key) = source_of(spec, container, kubeconfig)?;
    assert_eq!(source_kind, "secret", "the upstream kubeconfig {kubeconfig} comes from a {source_kind}");
    let deployment_yaml = std::fs::read_to_string(deploy_dir().join("deployment.yaml"))?;
    let documented = format!("create secret generic {secret}");
    assert!(deployment_yaml.contains(&documented), "deployment.yaml does not say how to `{documented}`");
    assert!(
        deployment_yaml.contains(&format!("--from-file={key}=")),
        "deployment.yaml's `{documented}` does not make key {key}, which {kubeconfig} needs"
    );

    // The downstream is the cluster the pod runs in.
    assert!(config.pointer("/downstream/kubeconfig").is_none(), "the downstream should be in-cluster");

    // pluginsDir: a whole ConfigMap volume (a subPath mount would never see updates).
    let plugins_dir = config["pluginsDir"].as_str().context("config.yaml: no pluginsDir")?;
    let name = plugins_config_map(spec, container, plugins_dir)?;
    find(&docs, "ConfigMap", &name)?;

    // metricsAddr's port is the container's metrics port; the probes use the next one.
    let metrics_port = metrics_port(&config, container)?;
    let probes = probes_port(container, metrics_port)?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == "probes" || get["port"] == probes, "{probe} probes port {}", get["port"]);
    }
    Ok(())
}

#[tokio::test]
async fn the_downsync_pod_meets_the_restricted_pod_security_standard() -> Result<()> {
    let docs = all_docs()?;
    let ns_labels = find(&docs, "Namespace", NAMESPACE)?.value["metadata"]["labels"].clone();
    assert_eq!(ns_labels["pod-security.kubernetes.io/enforce"], "restricted", "namespace.yaml: {ns_labels}");
    let (spec, _) = pod_spec(&docs)?;
    let registry = registry_docs()?;
    let (registry_spec, _) = pod_spec(&registry)?;

    let env = TestEnv::new("deploy-pss").await?;
    // The test namespace gets namespace.yaml's Pod Security labels.
    let pss: serde_json::Map<String, Value> = ns_labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Api::<Namespace>::all(env.downstream.clone())
        .patch(&env.namespace, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": pss}})))
        .await?;
    // Some clusters refuse pods whose ServiceAccount does not exist.
    let sa_name = spec["serviceAccountName"].as_str().unwrap_or("default");
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(sa_name.into()), ..ObjectMeta::default() },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(env.downstream.clone(), &env.namespace)
        .create(&PostParams::default(), &sa)
        .await?;

    let pods: Api<Pod> = Api::namespaced(env.downstream.clone(), &env.namespace);
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let mk_pod = |spec: &Value| -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "downsync"}, "spec": spec,
        }))?)
    };
    let accepted = pods.create(&dry_run, &mk_pod(spec)?).await;
    // The registry variant's pod, with its Secret volumes, too.
    let registry_accepted = pods.create(&dry_run, &mk_pod(registry_spec)?).await;

    // Without its securityContext the same pod must be refused, or the check above proves nothing.
    let mut loose = spec.clone();
    loose["containers"][0].as_object_mut().context("container")?.remove("securityContext");
    let refused = pods.create(&dry_run, &mk_pod(&loose)?).await;
    env.cleanup().await?;

    if let Err(e) = accepted {
        panic!("deployment.yaml's pod is refused in a namespace enforcing {pss:?}: {}", api_message(&e));
    }
    if let Err(e) = registry_accepted {
        panic!("examples/deploy-registry's pod is refused in a namespace enforcing {pss:?}: {}", api_message(&e));
    }
    match refused {
        Err(kube::Error::Api(status)) if status.is_forbidden() => Ok(()),
        other => panic!("a pod without a securityContext should be forbidden by Pod Security admission: {other:?}"),
    }
}

#[test]
fn the_ha_variant_runs_three_spread_replicas_with_a_budget_and_lease_rbac_in_its_namespace_only() -> Result<()> {
    let docs = ha_docs()?;
    let (spec, container) = pod_spec(&docs)?;
    let deployment = find(&docs, "Deployment", "downsync")?;
    assert_eq!(deployment.value["spec"]["replicas"], 3);
    assert_eq!(deployment.value["spec"]["strategy"]["type"], "RollingUpdate");
    let args: Vec<&str> = container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--ha"), "HA on: {args:?}");
    // The identity and the Lease namespace come from the downward API.
    let env = container["env"].as_array().context("no env")?;
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let var = env.iter().find(|e| e["name"] == name).with_context(|| format!("no {name}"))?;
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
    let spread = spec["topologySpreadConstraints"].as_array().context("no topologySpreadConstraints")?;
    assert!(spread.iter().any(|c| c["topologyKey"] == "kubernetes.io/hostname"), "spread across nodes");
    let labels = &deployment.value["spec"]["template"]["metadata"]["labels"];
    let pdb = find(&docs, "PodDisruptionBudget", "downsync")?;
    assert_eq!(&pdb.value["spec"]["selector"]["matchLabels"], labels, "the budget covers the pods");
    assert!(pdb.value["spec"]["maxUnavailable"] == 1 || pdb.value["spec"]["minAvailable"] == 2);

    // Lease RBAC: a namespaced Role in downsync-system, on leases only, allowing what downsync does.
    let role = find(&docs, "Role", "downsync-leases")?;
    assert_eq!(role.namespace(), Some(NAMESPACE));
    let rules = role.value["rules"].as_array().context("no rules")?;
    for rule in rules {
        assert_eq!(rule["apiGroups"], json!(["coordination.k8s.io"]), "leases only: {rule}");
        assert_eq!(rule["resources"], json!(["leases"]), "leases only: {rule}");
    }
    for verb in ["list", "create", "update", "delete"] {
        assert!(allows(rules, "coordination.k8s.io", "leases", verb), "the Role must allow {verb} on leases");
    }
    assert!(!docs.iter().any(|d| d.kind() == "ClusterRole" && d.value.to_string().contains("leases")));
    let binding = find(&docs, "RoleBinding", "downsync-leases")?;
    assert_eq!(binding.value["subjects"][0]["name"], "downsync");
    Ok(())
}

/// The files of one Secret by key: `data` (base64 in the manifest) and `stringData`.
fn secret_files(doc: &Doc) -> Result<BTreeMap<String, Vec<u8>>> {
    let secret: Secret = serde_json::from_value(doc.value.clone()).with_context(|| doc.describe())?;
    let mut files: BTreeMap<String, Vec<u8>> =
        secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    files.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    Ok(files)
}

#[test]
fn the_registry_variant_mounts_every_key_and_credentials_file_its_config_names_from_its_secrets() -> Result<()> {
    let docs = registry_docs()?;
    let secrets = registry_secrets()?;
    assert!(
        !docs.iter().any(|d| d.kind() == "Secret"),
        "kustomization.yaml must not apply the placeholder Secrets over the real ones"
    );
    let (spec, container) = pod_spec(&docs)?;
    let text = find(&docs, "ConfigMap", "downsync-config")?.value["data"]["config.yaml"]
        .as_str()
        .context("no config.yaml")?
        .to_string();
    // downsync's own parser: unknown or mistyped settings are refused here.
    let config = RunConfig::from_yaml(&text, Path::new("deploy-registry config.yaml"))
        .map_err(|e| anyhow::anyhow!("downsync refuses the registry variant's config: {e}"))?;

    // Every file the registry settings name, with the setting naming it.
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    let mut sources = Vec::new();
    for (name, p) in &config.plugins {
        if let Some(source) = &p.source {
            sources.push((name.clone(), source.clone()));
            assert!(!p.keys.is_empty(), "plugins.{name}: a source with no keys is refused at start");
        }
        for (i, key) in p.keys.iter().enumerate() {
            named.push((format!("plugins.{name}.keys[{i}]"), key.clone()));
        }
    }
    assert!(!sources.is_empty(), "the registry variant takes no plugin from a registry: {text}");
    // The credentials are docker's: $DOCKER_CONFIG/config.json.
    let env = container["env"].as_array().context("no env")?;
    let docker = env.iter().find(|e| e["name"] == "DOCKER_CONFIG").and_then(|e| e["value"].as_str());
    let credentials =
        PathBuf::from(docker.context("no DOCKER_CONFIG: the registry credentials are not found")?).join("config.json");
    named.push(("$DOCKER_CONFIG/config.json".into(), credentials.clone()));
    if let Some(ca) = &config.registry.ca_file {
        named.push(("registry.caFile".into(), ca.clone()));
    }

    // Each one is a key of an example Secret, mounted read-only (a whole volume or an item).
    let mounts = container["volumeMounts"].as_array().context("no volumeMounts")?;
    let root = std::env::temp_dir().join(format!("downsync-deploy-registry-{}", std::process::id()));
    let mut credentials_secret = None;
    for (setting, path) in &named {
        let at = path.to_str().context("a path that is not UTF-8")?;
        let (kind, secret, key) = source_of(spec, container, at).with_context(|| format!("{setting} {at}"))?;
        assert_eq!(kind, "secret", "{setting} {at} comes from a {kind}, not a Secret");
        let mount = mounts
            .iter()
            .filter(|m| m["mountPath"].as_str().is_some_and(|p| at.starts_with(p)))
            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
            .context("no mount")?;
        assert_eq!(mount["readOnly"], true, "{setting}: {mount}");
        let doc = secrets
            .iter()
            .find(|d| d.kind() == "Secret" && d.name() == secret)
            .with_context(|| format!("{setting} {at} is key {key} of Secret {secret}, not in secrets-example.yaml"))?;
        let files = secret_files(doc)?;
        let content = files
            .get(&key)
            .with_context(|| format!("{setting} {at} is key {key} of {}, which has no such key", doc.describe()))?;
        // The file where the pod would see it, under a scratch root.
        let file = root.join(path.strip_prefix("/").unwrap_or(path));
        std::fs::create_dir_all(file.parent().context("a file at /")?)?;
        std::fs::write(&file, content)?;
        if setting == "$DOCKER_CONFIG/config.json" {
            credentials_secret = Some(doc.clone());
        }
    }
    // The credentials are an image pull Secret's docker config, as `kubectl create secret
    // docker-registry` makes it.
    let doc = credentials_secret.context("$DOCKER_CONFIG/config.json comes from no Secret")?;
    assert_eq!(doc.str_at("/type"), "kubernetes.io/dockerconfigjson", "{}", doc.describe());
    // The README says how to make both, with the kubectl commands that give these keys and type.
    let readme = std::fs::read_to_string(registry_dir().join("README.md"))?;
    assert!(readme.contains(&format!("create secret docker-registry {}", doc.name())), "README.md");
    for (setting, path) in named.iter().filter(|(s, _)| s.starts_with("plugins.")) {
        let (_, secret, key) = source_of(spec, container, path.to_str().unwrap_or_default())?;
        let documented = format!("create secret generic {secret} --from-file={key}");
        assert!(readme.contains(&documented), "README.md does not say `{documented}` ({setting})");
    }

    // Pulled versions are cached under $XDG_CACHE_HOME/downsync/oci: a writable emptyDir.
    let xdg = env.iter().find(|e| e["name"] == "XDG_CACHE_HOME").and_then(|e| e["value"].as_str());
    let cache = format!("{}/downsync/oci", xdg.context("no XDG_CACHE_HOME")?);
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str().is_some_and(|p| cache.starts_with(&format!("{}/", p.trim_end_matches('/')))))
        .with_context(|| format!("nothing is mounted over the registry cache {cache}"))?;
    assert_ne!(mount["readOnly"], true, "the registry cache {cache} must be writable: {mount}");
    let volume = spec["volumes"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]));
    assert!(volume.is_some_and(|v| v.get("emptyDir").is_some()), "the cache volume: {volume:?}");

    // With those files in place (and a plugins folder), downsync's own checks pass once the key
    // is a real cosign public key, and refuse the placeholder: the check is not blind.
    let moved = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut local = config.clone();
    for p in local.plugins.values_mut() {
        p.keys = p.keys.iter().map(|k| moved(k)).collect();
    }
    local.registry.credentials = Some(moved(&credentials));
    local.registry.ca_file = local.registry.ca_file.as_deref().map(moved);
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    local.plugins_dir = Some(plugins);
    let placeholder = local.validate().expect_err("the placeholder cosign.pub is not a key");
    assert!(placeholder.to_string().contains(".keys[0]"), "{placeholder}");
    let cosign = Cosign::new(&root.join("cosign"))?;
    let public = std::fs::read(cosign.key_pair("cosign")?)?;
    for p in local.plugins.values() {
        for key in &p.keys {
            std::fs::write(key, &public)?;
        }
    }
    local.validate().map_err(|e| anyhow::anyhow!("with a real cosign.pub downsync still refuses the config: {e}"))?;
    // The example credentials name the registry of every source.
    for (name, source) in &sources {
        let registry = downsync::plugin::oci::Source::parse(source).map_err(anyhow::Error::msg)?;
        let auth = local.registry.auth(registry.registry()).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(
            matches!(auth, oci_client::secrets::RegistryAuth::Basic(..)),
            "plugins.{name}: the example credentials have none for {}",
            registry.registry()
        );
    }
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
