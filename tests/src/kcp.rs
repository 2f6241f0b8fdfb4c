//! kcp for the kcp tests: one kcp per test process (started with
//! `tests/cluster/kcp/controlplane.sh`, or the one `DOWNSYNC_KCP_KUBECONFIG` names, as
//! `tests/run.sh` sets it), a fresh workspace per test, and a kubeconfig for each workspace.
//!
//! A kcp workspace is a `tenancy.kcp.io/v1alpha1` Workspace object in its parent (here always
//! `root`); its API is served at `/clusters/root:<name>` on the same server, and its logical
//! cluster (the name kcp puts in every object's `kcp.io/cluster` annotation) is its
//! `spec.cluster`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::repo_root;

/// The admin kubeconfig of this process's kcp (current context: the root workspace).
static KCP: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn start_kcp() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DOWNSYNC_KCP_KUBECONFIG") {
        return Ok(path.into());
    }
    let script = repo_root().join("tests/cluster/kcp/controlplane.sh");
    let name = format!("kcp-{}", std::process::id());
    let out = Command::new("bash")
        .arg(&script)
        .args(["up", &name, "--owner-pid", &std::process::id().to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("starting kcp failed (see the output above)");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().map(PathBuf::from).ok_or_else(|| anyhow!("kcp/controlplane.sh printed no kubeconfig"))
}

/// The admin kubeconfig of the kcp of this process, started on first use.
pub fn kcp_kubeconfig() -> Result<PathBuf> {
    KCP.get_or_init(|| start_kcp().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

/// The admin kubeconfig, its current context's server moved to `path` (`/clusters/root:ws`,
/// `/services/apiexport/...`): a kubeconfig as a kcp user gets one.
pub fn kubeconfig_at(path: &str) -> Result<Kubeconfig> {
    let admin = kcp_kubeconfig()?;
    let mut kc = Kubeconfig::read_from(&admin).with_context(|| format!("reading {}", admin.display()))?;
    let current = kc.current_context.clone().ok_or_else(|| anyhow!("{}: no current context", admin.display()))?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("{}: no context {current}", admin.display()))?;
    let cluster = kc
        .clusters
        .iter_mut()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_mut())
        .ok_or_else(|| anyhow!("{}: no cluster {cluster_name}", admin.display()))?;
    let server = cluster.server.clone().unwrap_or_default();
    let base = server.split("/clusters/").next().unwrap_or(&server).trim_end_matches('/').to_string();
    cluster.server = Some(format!("{base}{path}"));
    Ok(kc)
}

/// A client for a kubeconfig.
pub async fn client_for(kc: Kubeconfig) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Client::try_from(config).context("building a kube client")
}

/// Writes a kubeconfig to a fresh file under the temp dir and returns its path.
pub fn write_kubeconfig(kc: &Kubeconfig, name: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("downsync-kcp-{name}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml_ng::to_string(kc)?).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn workspaces(root: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tenancy.kcp.io", "v1alpha1", "Workspace");
    Api::all_with(root.clone(), &ApiResource::from_gvk_with_plural(&gvk, "workspaces"))
}

/// A client for the root workspace.
pub async fn root_client() -> Result<Client> {
    client_for(kubeconfig_at("/clusters/root")?).await
}

/// One workspace under root.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Its name in root.
    pub name: String,
    /// Its logical cluster: what kcp writes into the `kcp.io/cluster` annotation of its objects.
    pub logical_cluster: String,
    /// A kubeconfig whose server is the workspace's URL.
    pub kubeconfig: PathBuf,
}

impl Workspace {
    /// Creates workspace `name` under root and waits until it is ready.
    pub async fn create(name: &str) -> Result<Self> {
        let root = root_client().await?;
        let api = workspaces(&root);
        let ws: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tenancy.kcp.io/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name, "labels": {crate::TEST_LABEL: "true"}},
            "spec": {}
        }))?;
        api.create(&PostParams::default(), &ws).await.with_context(|| format!("creating workspace {name}"))?;
        let ready = crate::eventually(&format!("workspace {name} to be ready"), Duration::from_secs(60), || async {
            let ws = serde_json::to_value(api.get(name).await?)?;
            let phase = ws.pointer("/status/phase").and_then(Value::as_str);
            let cluster = ws.pointer("/spec/cluster").and_then(Value::as_str).map(str::to_string);
            Ok(if phase == Some("Ready") { cluster } else { None })
        })
        .await?;
        let kubeconfig = write_kubeconfig(&kubeconfig_at(&format!("/clusters/root:{name}"))?, name)?;
        Ok(Self { name: name.to_string(), logical_cluster: ready, kubeconfig })
    }

    /// A client for the workspace.
    pub async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        client_for(kc).await
    }

    /// Deletes the workspace (kcp deletes everything in it) and its kubeconfig file.
    pub async fn delete(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.kubeconfig);
        match workspaces(&root_client().await?).delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting workspace {}", self.name)),
        }
    }
}

/// A name for a test's workspace or namespace: the test's name, made a DNS label, and a random
/// suffix, so that runs and tests never meet.
pub fn unique_name(test: &str) -> String {
    let slug: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    format!("{}-{:06x}", slug.trim_matches('-'), rand::random::<u32>() & 0xff_ffff)
}

/// An `apis.kcp.io/v1alpha1` kind (APIExport, APIBinding) at `client`.
pub fn kcp_api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("apis.kcp.io", "v1alpha1", kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The documents of one of `examples/kcp/`'s files.
pub fn example_docs(file: &str) -> Result<Vec<Value>> {
    let path = repo_root().join("examples/kcp").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Creates an example's documents in a workspace (cluster-scoped kinds only, as the examples are).
pub async fn create_docs(client: &Client, docs: Vec<Value>) -> Result<()> {
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let plural = format!("{}s", kind.to_lowercase());
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &kind), &plural);
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .create(&PostParams::default(), &serde_json::from_value(doc)?)
            .await?;
    }
    Ok(())
}
