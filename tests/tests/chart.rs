//! The Helm chart in charts/downsync, with the real `helm` (v4, built by tests/helm/build.sh):
//! `helm lint` and `helm template` of every values profile render what each profile is for; the
//! output is accepted by a real API server (server-side dry run, with the Prometheus Operator
//! CRDs installed for the monitoring objects); and the chart grants exactly the RBAC of the
//! kustomize manifests in examples/deploy, examples/deploy-ha and examples/deploy-registry, and
//! runs the same config with the same mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use downsync::app::RunConfig;
use downsync_tests::helm::{helm, monitoring_crds};
use downsync_tests::manifests::{self, api_message, kustomize, source_of, yaml_docs};
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, clusters, eventually, repo_root};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

/// The release name the comparisons with the kustomize manifests use: its objects are then
/// named as theirs are (`downsync`, `downsync-leases`, ...).
const RELEASE: &str = "downsync";

/// The namespace of the kustomize manifests.
const KUSTOMIZE_NAMESPACE: &str = "downsync-system";

const FIELD_MANAGER: &str = "downsync-chart-test";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/downsync")
}

/// Runs helm with `args`; stdout, or an error with stderr.
fn run_helm(args: &[String]) -> Result<String> {
    let out = Command::new(helm()?).args(args).output().context("running helm")?;
    if !out.status.success() {
        bail!("helm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template RELEASE charts/downsync -n NAMESPACE ARGS`, parsed.
fn render(namespace: &str, args: &[String]) -> Result<Vec<Value>> {
    let mut all: Vec<String> = ["template", RELEASE].map(String::from).to_vec();
    all.push(chart_dir().display().to_string());
    all.extend(["--namespace".to_string(), namespace.to_string()]);
    all.extend(args.iter().cloned());
    yaml_docs(&run_helm(&all)?, &format!("helm template {}", args.join(" ")))
}

/// A values profile: a name, helm's `--set` arguments, and the side its output goes to.
struct Profile {
    name: &'static str,
    args: Vec<String>,
    upstream: bool,
}

fn set(pairs: &[&str]) -> Vec<String> {
    pairs.iter().flat_map(|p| ["--set".to_string(), (*p).to_string()]).collect()
}

/// A plugin from a registry as examples/deploy-registry configures it: its key and credentials
/// Secrets mounted, `plugins.hpa-replicas.source` and `.keys` in the config; with `ca`, a CA
/// Secret too.
fn registry_values(ca: bool) -> Vec<String> {
    let mut pairs = vec![
        "registry.credentialsSecret=downsync-registry-credentials",
        "pluginKeys.secret=downsync-plugin-keys",
        "config.plugins.hpa-replicas.source=oci://registry.example.com/downsync/hpa-replicas:1.0",
        "config.plugins.hpa-replicas.keys={/etc/downsync/keys/cosign.pub}",
        "config.plugins.hpa-replicas.rollout.mode=shadow",
        "config.registry.checkSeconds=60",
    ];
    if ca {
        pairs.push("registry.caSecret=downsync-registry-ca");
    }
    set(&pairs)
}

/// The profiles the chart is tested with.
fn profiles() -> Result<Vec<Profile>> {
    // A real plugin component, put into the ConfigMap as the chart's README says: its base64 in a
    // file, given with --set-file (a --set argument that large exceeds the kernel's limit).
    let service = plugin_path("downsync-plugin-service")?;
    let encoded = std::env::temp_dir().join(format!("downsync-chart-service-{}.wasm.b64", std::process::id()));
    let out = Command::new("base64").arg("-w0").arg(&service).output().context("running base64")?;
    ensure!(out.status.success(), "base64 {} failed", service.display());
    std::fs::write(&encoded, &out.stdout)?;
    let mut plugins =
        vec!["--set-file".to_string(), format!("plugins.configMap.binaryData.service\\.wasm={}", encoded.display())];
    plugins.extend(set(&["image.repository=registry.example.com/downsync", "image.tag=test"]));
    Ok(vec![
        Profile { name: "single", args: Vec::new(), upstream: false },
        Profile { name: "ha", args: set(&["ha.enabled=true"]), upstream: false },
        Profile { name: "plugins-configmap", args: plugins, upstream: false },
        Profile {
            name: "plugins-image",
            args: set(&["plugins.image.reference=registry.example.com/downsync-plugins:1.0.0"]),
            upstream: false,
        },
        Profile { name: "plugins-registry", args: registry_values(true), upstream: false },
        Profile {
            name: "monitoring",
            args: set(&[
                "ha.enabled=true",
                "monitoring.podMonitor.enabled=true",
                "monitoring.prometheusRule.enabled=true",
                "monitoring.dashboard.enabled=true",
                "monitoring.podMonitor.labels.release=prometheus",
            ]),
            upstream: false,
        },
        Profile {
            name: "upstream",
            args: set(&["side=upstream", "config.upstreamWrites={finalizer,status}"]),
            upstream: true,
        },
    ])
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], want_kind: &str, suffix: &str) -> Result<&'a Value> {
    docs.iter().find(|d| kind(d) == want_kind && name(d).ends_with(suffix)).with_context(|| {
        let have: Vec<String> = docs.iter().map(|d| format!("{} {}", kind(d), name(d))).collect();
        format!("no {want_kind} *{suffix} in the rendering: {have:?}")
    })
}

/// The RunConfig in the rendered ConfigMap `<release>-config`.
fn run_config(docs: &[Value]) -> Result<Value> {
    let cm = find(docs, "ConfigMap", "-config")?;
    let text = cm["data"]["config.yaml"].as_str().context("the config ConfigMap has no config.yaml")?;
    serde_yaml_ng::from_str(text).context("the rendered config.yaml does not parse")
}

fn container(docs: &[Value]) -> Result<&Value> {
    find(docs, "Deployment", "")?.pointer("/spec/template/spec/containers/0").context("the Deployment has no container")
}

#[test]
fn helm_lints_and_renders_every_profile_as_it_is_configured() -> Result<()> {
    let chart: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    let app_version = chart["appVersion"].as_str().context("Chart.yaml has no appVersion")?.to_string();
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "Chart.yaml's appVersion is downsync's (the workspace) version");
    let ns = "downsync-test";
    for profile in profiles()? {
        let mut lint = vec!["lint".to_string(), "--strict".into(), chart_dir().display().to_string()];
        lint.extend(profile.args.iter().cloned());
        let out = run_helm(&lint).with_context(|| format!("profile {}", profile.name))?;
        assert!(out.contains("0 chart(s) failed"), "profile {}: {out}", profile.name);

        let docs = render(ns, &profile.args).with_context(|| format!("profile {}", profile.name))?;
        let kinds: BTreeSet<String> = docs.iter().map(|d| format!("{} {}", kind(d), name(d))).collect();
        for doc in &docs {
            if let Some(at) = doc["metadata"]["namespace"].as_str() {
                assert_eq!(
                    at,
                    ns,
                    "profile {}: {} {} is not in the release namespace",
                    profile.name,
                    kind(doc),
                    name(doc)
                );
            }
        }
        match profile.name {
            "upstream" => {
                let expected: BTreeSet<String> =
                    ["ClusterRole downsync-upstream", "ClusterRoleBinding downsync-upstream"].map(String::from).into();
                assert_eq!(kinds, expected, "side=upstream renders the upstream RBAC only");
                let rules = find(&docs, "ClusterRole", "-upstream")?["rules"].as_array().cloned().unwrap_or_default();
                assert!(
                    manifests::allows(&rules, "apps", "deployments/status", "patch"),
                    "upstreamWrites status: {rules:?}"
                );
                assert!(manifests::allows(&rules, "", "configmaps", "update"), "upstreamWrites finalizer: {rules:?}");
                continue;
            }
            name => {
                let deployment = find(&docs, "Deployment", "")?;
                let config = run_config(&docs)?;
                let c = container(&docs)?;
                let ha = name == "ha" || name == "monitoring";
                assert_eq!(deployment["spec"]["replicas"], if ha { 3 } else { 1 }, "profile {name}");
                assert_eq!(
                    deployment["spec"]["strategy"]["type"],
                    if ha { "RollingUpdate" } else { "Recreate" },
                    "profile {name}"
                );
                assert_eq!(config.get("ha").is_some(), ha, "profile {name}: an `ha` section turns HA on: {config}");
                assert_eq!(kinds.contains("PodDisruptionBudget downsync"), ha, "profile {name}: {kinds:?}");
                assert_eq!(kinds.contains("Role downsync-leases"), ha, "profile {name}: {kinds:?}");
                if ha {
                    assert_eq!(config["ha"]["shards"], 6, "profile {name}");
                    let role = find(&docs, "Role", "-leases")?;
                    let names = role.pointer("/rules/1/resourceNames").and_then(Value::as_array).cloned();
                    let expected: Vec<Value> = (0..6).map(|i| json!(format!("downsync-default-shard-{i}"))).collect();
                    assert_eq!(names, Some(expected), "the shard Leases of target default");
                }
                // The metrics port the config serves on is the container's, which the probes use.
                let port = c["ports"][0]["containerPort"].as_u64().context("no container port")?;
                assert_eq!(config["metricsAddr"], format!("0.0.0.0:{port}"));
                // The probes answer plainly on the next port.
                assert_eq!(c["readinessProbe"]["httpGet"]["port"], c["ports"][1]["name"]);
                assert_eq!(c["ports"][1]["containerPort"].as_u64(), Some(port + 1));
                let image = c["image"].as_str().unwrap_or_default();
                let volumes = deployment.pointer("/spec/template/spec/volumes").cloned().unwrap_or_default();
                let plugins_volume = volumes
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["name"] == "plugins"))
                    .cloned()
                    .context("no plugins volume")?;
                match name {
                    "plugins-configmap" => {
                        assert_eq!(image, "registry.example.com/downsync:test");
                        let cm = find(&docs, "ConfigMap", "-plugins")?;
                        let data = cm["binaryData"]["service.wasm"].as_str().unwrap_or_default();
                        let want = std::fs::read(plugin_path("downsync-plugin-service")?)?;
                        assert!(!data.is_empty() && data.len() == want.len().div_ceil(3) * 4, "the whole component");
                        assert_eq!(plugins_volume["configMap"]["name"], name_of(cm));
                    }
                    "plugins-image" => {
                        assert_eq!(
                            plugins_volume["image"]["reference"], "registry.example.com/downsync-plugins:1.0.0",
                            "{plugins_volume}"
                        );
                        assert!(!kinds.contains("ConfigMap downsync-plugins"), "no plugins ConfigMap: {kinds:?}");
                    }
                    _ => {
                        assert_eq!(image, format!("downsync:{app_version}"), "the default tag is the appVersion");
                        assert_eq!(plugins_volume["configMap"]["name"], "downsync-plugins");
                    }
                }
                let spec = deployment.pointer("/spec/template/spec").context("no pod spec")?;
                check_registry_mounts(name, &config, spec, c)?;
                let monitoring = ["PodMonitor downsync", "PrometheusRule downsync", "ConfigMap downsync-dashboard"];
                for m in monitoring {
                    assert_eq!(kinds.contains(m), name == "monitoring", "profile {name}: {m} in {kinds:?}");
                }
                if name == "monitoring" {
                    let files = chart_dir().join("files");
                    let alerts: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(files.join("alerts.yaml"))?)?;
                    assert_eq!(find(&docs, "PrometheusRule", "")?["spec"], alerts, "the rules are files/alerts.yaml");
                    let dashboard = find(&docs, "ConfigMap", "-dashboard")?;
                    let json: Value =
                        serde_json::from_str(dashboard["data"]["downsync.json"].as_str().unwrap_or_default())
                            .context("the dashboard ConfigMap holds no JSON")?;
                    assert_eq!(json["uid"], "downsync");
                    let pm = find(&docs, "PodMonitor", "")?;
                    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");
                    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], c["ports"][0]["name"]);
                    assert_eq!(pm["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);
                }
            }
        }
    }
    // Mistyped values are refused with a message (values.schema.json), not rendered as nothing
    // or ignored.
    // A key file under the keys folder without the Secret that would put it there.
    for (bad, says) in [
        ("side=upstrem", "/side"),
        ("replicaCount=3", "replicaCount"),
        ("ha.shards=300", "/ha/shards"),
        ("registry.credentials=x", "/registry"),
        ("config.plugins.x.keys={/etc/downsync/keys/cosign.pub}", "set pluginKeys.secret"),
    ] {
        let err = render(ns, &set(&[bad])).expect_err(bad);
        assert!(format!("{err:#}").contains(says), "{bad}: {err:#}");
    }
    Ok(())
}

/// Profile `plugins-registry`: every file its config names for registries (each
/// `plugins.*.keys[]`, `registry.caFile`, and the credentials at `$DOCKER_CONFIG/config.json`) is
/// the key of the Secret the values name, mounted read-only, and downsync parses the config. Any
/// other profile mounts none of them, sets no `DOCKER_CONFIG` and has no `registry` section.
fn check_registry_mounts(profile: &str, config: &Value, spec: &Value, c: &Value) -> Result<()> {
    let volumes: BTreeSet<&str> =
        spec["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    if profile != "plugins-registry" {
        for v in ["plugin-keys", "registry-credentials", "registry-ca"] {
            assert!(!volumes.contains(v), "profile {profile}: volume {v} without its value");
        }
        assert!(config.get("registry").is_none(), "profile {profile}: {config}");
        assert!(docker_config(c).is_none(), "profile {profile}: DOCKER_CONFIG without its Secret");
        return Ok(());
    }
    let text = serde_yaml_ng::to_string(config)?;
    RunConfig::from_yaml(&text, std::path::Path::new("rendered config.yaml"))
        .map_err(|e| anyhow::anyhow!("downsync refuses the rendered config: {e}"))?;
    let plugin = &config["plugins"]["hpa-replicas"];
    assert_eq!(plugin["source"], "oci://registry.example.com/downsync/hpa-replicas:1.0", "{config}");
    assert_eq!(config["registry"]["checkSeconds"], 60, "config.registry is passed through: {config}");
    let mut files: Vec<(String, &str, (&str, &str))> = plugin["keys"]
        .as_array()
        .context("no keys")?
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("keys[{i}]"), k.as_str().unwrap_or_default(), ("downsync-plugin-keys", "cosign.pub")))
        .collect();
    assert_eq!(files.len(), 1, "{plugin}");
    let ca = config["registry"]["caFile"].as_str().with_context(|| format!("no registry.caFile: {config}"))?;
    files.push(("registry.caFile".into(), ca, ("downsync-registry-ca", "ca.crt")));
    let credentials = format!("{}/config.json", docker_config(c).context("no DOCKER_CONFIG")?);
    files.push((
        "$DOCKER_CONFIG/config.json".into(),
        &credentials,
        ("downsync-registry-credentials", ".dockerconfigjson"),
    ));
    let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
    for (setting, path, (secret, key)) in files {
        let (kind, name, at) = source_of(spec, c, path).with_context(|| format!("{setting} {path}"))?;
        assert_eq!((kind.as_str(), name.as_str(), at.as_str()), ("secret", secret, key), "{setting} {path}");
        let mount = mounts
            .iter()
            .filter(|m| m["mountPath"].as_str().is_some_and(|p| path.starts_with(&format!("{p}/"))))
            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
            .context("no mount")?;
        assert_eq!(mount["readOnly"], true, "{setting}: {mount}");
        assert!(mount.get("subPath").is_none(), "{setting}: a subPath mount never sees a rotated Secret");
    }
    Ok(())
}

/// The container's `DOCKER_CONFIG`, where downsync finds registry credentials.
fn docker_config(c: &Value) -> Option<&str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == "DOCKER_CONFIG")?["value"].as_str()
}

fn name_of(doc: &Value) -> Value {
    doc["metadata"]["name"].clone()
}

/// Creates the CRDs (for real: a dry run of a PrometheusRule needs its kind served) unless they
/// exist, and waits until they are established.
async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in monitoring_crds()? {
        let text = std::fs::read_to_string(&file)?;
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).with_context(|| format!("{}", file.display()))?;
        let crd_name = crd.metadata.name.clone().context("a CRD without a name")?;
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => bail!("creating CRD {crd_name}: {}", api_message(&e)),
        }
        eventually(&format!("CRD {crd_name} established"), Duration::from_secs(60), || async {
            let crd = api.get(&crd_name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_profile_is_accepted_by_the_api_server_in_a_server_side_dry_run() -> Result<()> {
    let env = TestEnv::new("chart-dry-run").await?;
    let upstream = clusters()?.upstream.client().await?;
    install_crds(&env.downstream).await?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for profile in profiles()? {
        let client = if profile.upstream { &upstream } else { &env.downstream };
        for doc in render(&env.namespace, &profile.args)? {
            checked += 1;
            if let Err(msg) = manifests::dry_run(client, &doc, FIELD_MANAGER).await {
                failures.push(format!("profile {}: {} {}: {msg}", profile.name, kind(&doc), name(&doc)));
            }
        }
    }
    env.cleanup().await?;
    assert!(checked >= 40, "every profile rendered its objects: {checked}");
    assert!(failures.is_empty(), "the API server refused these objects:\n  {}", failures.join("\n  "));
    Ok(())
}

/// What an RBAC object grants or binds, comparable between two renderings: for a Role or
/// ClusterRole the set of (apiGroup, resource, verb, resourceName) it allows, for a binding its
/// roleRef and subjects.
fn rbac(docs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for doc in docs {
        let key = format!("{} {}/{}", kind(doc), doc["metadata"]["namespace"].as_str().unwrap_or(""), name(doc));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
        };
        let grants: BTreeSet<String> = match kind(doc) {
            "Role" | "ClusterRole" => {
                let mut set = BTreeSet::new();
                for rule in doc["rules"].as_array().into_iter().flatten() {
                    for u in strings(&rule["nonResourceURLs"]) {
                        for v in strings(&rule["verbs"]) {
                            set.insert(format!("url {u} {v}"));
                        }
                    }
                    let names = strings(&rule["resourceNames"]);
                    let names = if names.is_empty() { vec!["*".to_string()] } else { names };
                    for g in strings(&rule["apiGroups"]) {
                        for r in strings(&rule["resources"]) {
                            for v in strings(&rule["verbs"]) {
                                for n in &names {
                                    set.insert(format!("{g}/{r} {v} {n}"));
                                }
                            }
                        }
                    }
                }
                set
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let mut set: BTreeSet<String> = BTreeSet::new();
                set.insert(format!("roleRef {}", canonical(&doc["roleRef"])));
                for s in doc["subjects"].as_array().into_iter().flatten() {
                    set.insert(format!("subject {}", canonical(s)));
                }
                set
            }
            _ => continue,
        };
        out.insert(key, grants);
    }
    out
}

/// A flat object as text with its keys sorted, whatever order a renderer wrote them in.
fn canonical(v: &Value) -> String {
    let sorted: BTreeMap<String, Value> = serde_json::from_value(v.clone()).unwrap_or_default();
    format!("{sorted:?}")
}

/// The differences between two RBAC maps, one line each.
fn rbac_diff(
    kustomize: &BTreeMap<String, BTreeSet<String>>,
    chart: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut diff = Vec::new();
    for key in kustomize.keys().chain(chart.keys()).collect::<BTreeSet<_>>() {
        let (k, c) = (kustomize.get(key), chart.get(key));
        match (k, c) {
            (Some(k), Some(c)) => {
                for g in k.difference(c) {
                    diff.push(format!("{key}: only kustomize: {g}"));
                }
                for g in c.difference(k) {
                    diff.push(format!("{key}: only the chart: {g}"));
                }
            }
            (Some(_), None) => diff.push(format!("{key}: only in kustomize")),
            (None, Some(_)) => diff.push(format!("{key}: only in the chart")),
            (None, None) => {}
        }
    }
    diff
}

/// The kustomize config without what the chart sets from its own values (`ha`).
fn without_ha(mut config: Value) -> Value {
    if let Some(map) = config.as_object_mut() {
        map.remove("ha");
    }
    config
}

#[test]
fn the_chart_grants_the_rbac_of_the_kustomize_manifests_and_runs_the_same_config() -> Result<()> {
    let examples = repo_root().join("examples");
    let up_text = std::fs::read_to_string(examples.join("deploy/rbac-upstream.yaml"))?;
    let pairs = [
        ("single", kustomize(&examples.join("deploy"))?, render(KUSTOMIZE_NAMESPACE, &[])?),
        ("ha", kustomize(&examples.join("deploy-ha"))?, render(KUSTOMIZE_NAMESPACE, &set(&["ha.enabled=true"]))?),
        (
            "registry",
            kustomize(&examples.join("deploy-registry"))?,
            render(KUSTOMIZE_NAMESPACE, &registry_values(false))?,
        ),
        (
            "upstream",
            yaml_docs(&up_text, "rbac-upstream.yaml")?,
            render(KUSTOMIZE_NAMESPACE, &set(&["side=upstream"]))?,
        ),
    ];
    for (what, k, c) in &pairs {
        let (kr, cr) = (rbac(k), rbac(c));
        assert!(kr.len() >= 2, "{what}: the kustomize side has RBAC objects: {kr:?}");
        let diff = rbac_diff(&kr, &cr);
        assert!(
            diff.is_empty(),
            "{what}: the chart and the kustomize manifests grant differently:\n  {}",
            diff.join("\n  ")
        );
        if *what == "upstream" {
            continue;
        }
        // The same run configuration; the chart sets `ha` from its values.
        let (kc, cc) = (run_config(k)?, run_config(c)?);
        assert_eq!(without_ha(cc.clone()), without_ha(kc), "{what}: the chart's config.yaml and examples/deploy's");
        // HA as the overlay runs it: its replicas, strategy, shards and budget.
        let (kd, cd) = (find(k, "Deployment", "")?, find(c, "Deployment", "")?);
        assert_eq!(cd["spec"]["replicas"], kd["spec"]["replicas"], "{what}");
        assert_eq!(cd["spec"]["strategy"], kd["spec"]["strategy"], "{what}");
        let kargs: Vec<&str> = kd
            .pointer("/spec/template/spec/containers/0/args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let shards =
            kargs.iter().position(|a| *a == "--ha-shards").and_then(|i| kargs.get(i + 1)).map(|s| s.parse::<u64>());
        match shards {
            Some(n) => assert_eq!(cc["ha"], json!({"shards": n?}), "{what}: --ha --ha-shards {kargs:?}"),
            None => assert!(cc.get("ha").is_none(), "{what}: no `ha` section, no HA: {}", cc["ha"]),
        }
        let budget = |docs: &[Value]| {
            docs.iter().find(|d| kind(d) == "PodDisruptionBudget").map(|d| d["spec"]["maxUnavailable"].clone())
        };
        assert_eq!(budget(c), budget(k), "{what}: the PodDisruptionBudget");
        // The same security context, probes and mounts.
        let (kc, cc) = (container(k)?, container(c)?);
        for field in ["securityContext", "livenessProbe", "readinessProbe", "ports"] {
            assert_eq!(cc[field], kc[field], "{what}: the container's {field}");
        }
        // The same environment, in whatever order a patch merged it.
        let env =
            |c: &Value| -> BTreeSet<String> { c["env"].as_array().into_iter().flatten().map(canonical).collect() };
        assert_eq!(env(cc), env(kc), "{what}: the container's env");
        let mounts = |c: &Value| -> BTreeSet<String> {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| format!("{} {}", m["name"], m["mountPath"]))
                .collect()
        };
        assert_eq!(mounts(cc), mounts(kc), "{what}: the volume mounts");
        // The Secrets behind the registry mounts (the others differ in form: the chart projects
        // the kubeconfig key).
        let secret_volumes = |d: &Value| -> BTreeMap<String, Value> {
            d.pointer("/spec/template/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|v| matches!(v["name"].as_str(), Some("plugin-keys" | "registry-credentials" | "registry-ca")))
                .map(|v| (v["name"].as_str().unwrap_or_default().to_string(), v["secret"].clone()))
                .collect()
        };
        assert_eq!(secret_volumes(cd), secret_volumes(kd), "{what}: the registry Secrets' volumes");
        assert_eq!(secret_volumes(kd).is_empty(), *what != "registry", "{what}");
        assert_eq!(
            cd.pointer("/spec/template/spec/securityContext"),
            kd.pointer("/spec/template/spec/securityContext"),
            "{what}: the pod's securityContext"
        );
    }
    // A change in the kustomize RBAC is seen: the comparison is not blind.
    let mut changed = pairs[0].1.clone();
    for doc in &mut changed {
        if kind(doc) == "ClusterRole" {
            doc["rules"][0]["verbs"] = json!(["get"]);
        }
    }
    assert!(!rbac_diff(&rbac(&changed), &rbac(&pairs[0].2)).is_empty(), "a narrowed rule must show as a difference");
    Ok(())
}

#[test]
fn namespace_cleanup_false_takes_the_namespace_delete_and_the_view_binding_away() -> Result<()> {
    let grants = |args: &[String]| -> Result<BTreeSet<String>> {
        let docs = render("downsync-system", args)?;
        let all = rbac(&docs);
        Ok(all.into_iter().flat_map(|(k, set)| set.into_iter().map(move |g| format!("{k}: {g}"))).collect())
    };
    let on = grants(&[])?;
    let off = grants(&set(&["namespaceCleanup=false"]))?;
    let gone: Vec<&String> = on.difference(&off).collect();
    assert!(gone.iter().any(|g| g.contains("/namespaces delete")), "{gone:?}");
    assert!(gone.iter().any(|g| g.contains("roleRef") && g.contains("view")), "{gone:?}");
    assert!(gone.iter().all(|g| g.contains("namespace")), "only cleanup's grants go: {gone:?}");
    assert!(off.difference(&on).next().is_none(), "nothing is added");
    Ok(())
}
