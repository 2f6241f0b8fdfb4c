//! `downsync run`, `diff` and `explain` with a real kcp (v0.26) as the upstream and the real
//! downstream control plane. One workspace: create, update, delete, the upstream finalizer,
//! status upsync of a CRD kind, namespace creation, a `NameConflict` Event in the workspace, and
//! `diff`. Many workspaces through the example APIExport's virtual workspace: copies apart, each
//! change and status in its own workspace, `diff` and `explain` naming the workspace, a
//! workspace that revokes its claims. Each test has workspaces of its own in the one kcp of the
//! process (see `downsync_tests::kcp`).

use std::ffi::OsString;
use std::time::Duration;

use downsync_tests::daemon::{Daemon, run_to_end, run_to_end_with_env};
use downsync_tests::kcp::{Workspace, create_docs, example_docs, kcp_api, unique_name};
use downsync_tests::{clusters, create_namespace, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

/// One test's world: a fresh workspace with a namespace of the test's own in it, and the
/// downstream cluster.
///
/// Both are removed by [`WsEnv::cleanup`], or else when it is dropped (a failed assertion, an
/// early `?`), as `TestEnv` does.
struct WsEnv {
    ws: Workspace,
    up: Client,
    down: Client,
    ns: String,
    cleaned: bool,
}

/// Deletes the workspace and the downstream namespace (one already gone is fine).
async fn remove(ws: &Workspace, ns: &str) -> anyhow::Result<()> {
    ws.delete().await?;
    let down = clusters()?.downstream.client().await?;
    match Api::<Namespace>::all(down).delete(ns, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A drop cannot await, nor use the test's clients (their runtime may be the thread dropping
/// us): a thread of its own, with its own runtime, deletes within `DROP_CLEANUP_TIMEOUT`.
impl Drop for WsEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (ws, ns) = (self.ws.clone(), self.ns.clone());
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let done = rt.block_on(tokio::time::timeout(downsync_tests::DROP_CLEANUP_TIMEOUT, remove(&ws, &ns)));
            rt.shutdown_background();
            done.map_err(|_| anyhow::anyhow!("gave up after {:?}", downsync_tests::DROP_CLEANUP_TIMEOUT))?
        })
        .join();
        if !matches!(outcome, Ok(Ok(()))) {
            eprintln!("WsEnv: workspace {} and namespace {} may be left behind", self.ws.name, self.ns);
        }
    }
}

impl WsEnv {
    async fn new(test: &str) -> anyhow::Result<Self> {
        let ws = Workspace::create(&unique_name(test)).await?;
        let up = ws.client().await?;
        let down = clusters()?.downstream.client().await?;
        let ns = unique_name(test);
        let env = Self { ws, up, down, ns, cleaned: false };
        create_namespace(&env.up, &env.ns).await?;
        Ok(env)
    }

    /// `--upstream-kubeconfig` (the workspace) and `--downstream-kubeconfig`.
    fn cluster_args(&self) -> anyhow::Result<Vec<OsString>> {
        let down = clusters()?.downstream;
        let mut a: Vec<OsString> = vec!["--upstream-kubeconfig".into(), self.ws.kubeconfig.clone().into()];
        a.extend(["--downstream-kubeconfig".into(), down.kubeconfig.into()]);
        if let Some(ctx) = down.context {
            a.extend(["--downstream-context".into(), ctx.into()]);
        }
        Ok(a)
    }

    /// The namespace, target, and more flags.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = ["--namespace", &self.ns, "--target", &self.ns].map(String::from).to_vec();
        a.extend(extra.iter().map(|s| (*s).to_string()));
        a
    }

    fn start(&self, name: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        Daemon::start_with(name, &self.cluster_args()?, &self.args(extra), Some("info,downsync=debug"))
    }

    async fn cleanup(mut self) -> anyhow::Result<()> {
        remove(&self.ws, &self.ns).await?;
        self.cleaned = true;
        Ok(())
    }
}

fn configmap(ns: &str, name: &str, data: Value) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "data": data}))?)
}

fn annotations(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.annotations.iter().flatten().map(|(k, _)| k.clone()).collect()
}

#[tokio::test]
async fn a_workspace_syncs_creates_updates_and_deletes_behind_the_upstream_finalizer() -> anyhow::Result<()> {
    let env = WsEnv::new("kcp-one-ws").await?;
    let ns = env.ns.clone();
    let up_cms: Api<ConfigMap> = Api::namespaced(env.up.clone(), &ns);
    up_cms.create(&PostParams::default(), &configmap(&ns, "settings", json!({"mode": "fast"}))?).await?;
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "token", "namespace": ns}, "stringData": {"token": "s3cr3t"}}),
    )?;
    Api::<Secret>::namespaced(env.up.clone(), &ns).create(&PostParams::default(), &secret).await?;
    // kcp marks every object with its logical cluster.
    let upstream = up_cms.get("settings").await?;
    assert!(annotations(&upstream.metadata).contains(&"kcp.io/cluster".to_string()), "{:?}", upstream.metadata);

    let mut d =
        env.start("kcp-one-ws", &["--resource", "v1/ConfigMap", "--resource", "v1/Secret", "--upstream-finalizer"])?;
    d.wait_ready(Duration::from_secs(120)).await?;

    // The namespace was created downstream, and both objects are there, without kcp's marks.
    assert!(Api::<Namespace>::all(env.down.clone()).get_opt(&ns).await?.is_some(), "namespace created");
    let down_cms: Api<ConfigMap> = Api::namespaced(env.down.clone(), &ns);
    let copy = down_cms.get("settings").await?;
    assert_eq!(copy.data.unwrap_or_default().get("mode").map(String::as_str), Some("fast"));
    let kcp_marks: Vec<_> = annotations(&copy.metadata).into_iter().filter(|k| k.contains("kcp.io/")).collect();
    assert!(kcp_marks.is_empty(), "kcp's annotations were copied downstream: {kcp_marks:?}");
    // kcp's server-set annotation does not take downsync's own record of the origin with it.
    let origin = copy.metadata.annotations.clone().unwrap_or_default().remove("downsync.dev/upstream-namespace");
    assert_eq!(origin.as_deref(), Some(ns.as_str()));
    let token = Api::<Secret>::namespaced(env.down.clone(), &ns).get("token").await?;
    assert_eq!(token.data.unwrap_or_default().get("token").map(|b| b.0.clone()), Some(b"s3cr3t".to_vec()));
    let has_finalizer = |cm: &ConfigMap| cm.metadata.finalizers.iter().flatten().any(|f| f == "downsync.dev/syncer");
    eventually("the finalizer on the workspace's object", Duration::from_secs(30), || async {
        Ok(has_finalizer(&up_cms.get("settings").await?).then_some(()))
    })
    .await?;

    // An update in the workspace follows.
    up_cms.patch("settings", &PatchParams::default(), &Patch::Merge(json!({"data": {"mode": "slow"}}))).await?;
    eventually("the update downstream", Duration::from_secs(30), || async {
        let cm = down_cms.get("settings").await?;
        Ok((cm.data.unwrap_or_default().get("mode").map(String::as_str) == Some("slow")).then_some(()))
    })
    .await?;

    // A delete in the workspace waits for the copy to go, then completes.
    up_cms.delete("settings", &DeleteParams::default()).await?;
    eventually("the copy, then the workspace's object, to go", Duration::from_secs(30), || async {
        Ok((down_cms.get_opt("settings").await?.is_none() && up_cms.get_opt("settings").await?.is_none()).then_some(()))
    })
    .await?;

    // The namespace goes in the workspace: its Secret's copy goes, then the namespace downsync made.
    Api::<Namespace>::all(env.up.clone()).delete(&ns, &DeleteParams::default()).await?;
    let namespaces: Api<Namespace> = Api::all(env.down.clone());
    eventually("the downstream namespace to go with the workspace's", Duration::from_secs(90), || async {
        Ok(namespaces.get_opt(&ns).await?.is_none_or(|n| n.metadata.deletion_timestamp.is_some()).then_some(()))
    })
    .await?;
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", d.log.display());
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn a_restart_over_a_synced_workspace_writes_nothing_downstream() -> anyhow::Result<()> {
    let env = WsEnv::new("kcp-restart").await?;
    let ns = env.ns.clone();
    let up_cms: Api<ConfigMap> = Api::namespaced(env.up.clone(), &ns);
    for i in 0..20 {
        up_cms
            .create(&PostParams::default(), &configmap(&ns, &format!("cm-{i:02}"), json!({"i": i.to_string()}))?)
            .await?;
    }
    let flags = ["--resource", "v1/ConfigMap", "--upstream-finalizer"];
    let mut first = env.start("kcp-restart-1", &flags)?;
    first.wait_ready(Duration::from_secs(120)).await?;
    assert!(first.terminate()?.success());
    let down_cms: Api<ConfigMap> = Api::namespaced(env.down.clone(), &ns);
    let versions = || async {
        let list = down_cms.list(&ListParams::default().labels(&format!("downsync.dev/target={ns}"))).await?;
        Ok::<_, anyhow::Error>(
            list.items.into_iter().map(|c| (c.metadata.name, c.metadata.resource_version)).collect::<Vec<_>>(),
        )
    };
    let before = versions().await?;
    assert_eq!(before.len(), 20);

    let mut second = env.start("kcp-restart-2", &flags)?;
    second.wait_ready(Duration::from_secs(120)).await?;
    // Give any late write the chance to land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(versions().await?, before, "a downstream object changed its resourceVersion: something was written");
    let writes = ["created", "updated", "recreated", "deleted"]
        .iter()
        .map(|op| second.metric("downsync_syncs_total", &[&format!("operation=\"{op}\"")]))
        .sum::<anyhow::Result<f64>>()?;
    assert_eq!(writes, 0.0, "log: {}", second.log.display());
    assert!(second.terminate()?.success());
    env.cleanup().await
}

const WIDGET_GROUP: &str = "kcp.test.downsync.dev";

/// A namespaced CRD kind with a status subresource, as kcp users bring their own kinds.
fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{WIDGET_GROUP}")},
        "spec": {
            "group": WIDGET_GROUP, "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    })
}

fn widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(WIDGET_GROUP, "v1", "Widget");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
}

/// Installs the Widget CRD (one that exists already is fine) and waits until it is served.
async fn install_widget_crd(client: &Client) -> anyhow::Result<()> {
    install_crd(client, widget_crd(), &GroupVersionKind::gvk(WIDGET_GROUP, "v1", "Widget")).await
}

/// Installs a CRD (one that exists already is fine) and waits until its kind `gvk` is served.
async fn install_crd(client: &Client, crd: Value, gvk: &GroupVersionKind) -> anyhow::Result<()> {
    let crd_gvk = GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
    let crds: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&crd_gvk, "customresourcedefinitions"));
    match crds.create(&PostParams::default(), &serde_json::from_value(crd)?).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // kcp serves the kind at once, but its discovery (which downsync resolves kinds with) follows
    // a few seconds later.
    eventually(&format!("the {} kind in discovery", gvk.kind), Duration::from_secs(60), || async {
        Ok(kube::discovery::pinned_kind(client, gvk).await.is_ok().then_some(()))
    })
    .await
}

#[tokio::test]
async fn the_status_of_a_crd_kind_goes_back_to_the_workspace() -> anyhow::Result<()> {
    let env = WsEnv::new("kcp-status").await?;
    let ns = env.ns.clone();
    install_widget_crd(&env.up).await?;
    install_widget_crd(&env.down).await?;
    let widget = json!({"apiVersion": format!("{WIDGET_GROUP}/v1"), "kind": "Widget",
        "metadata": {"name": "w1", "namespace": ns}, "spec": {"size": 3}});
    widgets(&env.up, &ns).create(&PostParams::default(), &serde_json::from_value(widget)?).await?;

    let resource = format!("{WIDGET_GROUP}/v1/Widget");
    let mut d = env.start("kcp-status", &["--resource", &resource, "--status-upsync"])?;
    d.wait_ready(Duration::from_secs(120)).await?;
    let down = widgets(&env.down, &ns);
    assert_eq!(down.get("w1").await?.data.pointer("/spec/size"), Some(&json!(3)));

    // A downstream controller reports; the workspace's object gets its status.
    down.patch_status("w1", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true, "replicas": 3}})))
        .await?;
    let up = widgets(&env.up, &ns);
    eventually("the status in the workspace", Duration::from_secs(30), || async {
        let w = up.get("w1").await?;
        Ok((w.data.pointer("/status/ready") == Some(&json!(true))).then_some(()))
    })
    .await?;
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn an_unowned_downstream_object_is_left_alone_and_the_workspace_gets_a_name_conflict_event() -> anyhow::Result<()>
{
    let env = WsEnv::new("kcp-conflict").await?;
    let ns = env.ns.clone();
    create_namespace(&env.down, &ns).await?;
    let down_cms: Api<ConfigMap> = Api::namespaced(env.down.clone(), &ns);
    let theirs = down_cms.create(&PostParams::default(), &configmap(&ns, "taken", json!({"owner": "them"}))?).await?;
    let up_cms: Api<ConfigMap> = Api::namespaced(env.up.clone(), &ns);
    for name in ["taken", "free"] {
        up_cms.create(&PostParams::default(), &configmap(&ns, name, json!({"owner": "us"}))?).await?;
    }
    let mut d = env.start("kcp-conflict", &["--resource", "v1/ConfigMap"])?;
    d.wait_ready(Duration::from_secs(120)).await?;

    let events: Api<Event> = Api::namespaced(env.up.clone(), &ns);
    let event = eventually("a NameConflict Event in the workspace", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("NameConflict") && e.involved_object.name.as_deref() == Some("taken")
        }))
    })
    .await?;
    assert!(event.message.unwrap_or_default().contains("not owned"), "the Event says why");
    assert_eq!(
        down_cms.get("taken").await?.metadata.resource_version,
        theirs.metadata.resource_version,
        "never written"
    );
    assert!(down_cms.get_opt("free").await?.is_some(), "the rest still syncs");
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn diff_against_a_workspace_shows_the_changes_and_neither_writes_nor_says_it_did() -> anyhow::Result<()> {
    let env = WsEnv::new("kcp-diff").await?;
    let ns = env.ns.clone();
    let up_cms: Api<ConfigMap> = Api::namespaced(env.up.clone(), &ns);
    up_cms.create(&PostParams::default(), &configmap(&ns, "cfg", json!({"level": "info"}))?).await?;
    let mut once: Vec<OsString> = vec!["run".into(), "--once".into(), "--metrics-addr".into(), "off".into()];
    once.extend(env.cluster_args()?);
    once.extend(env.args(&["--resource", "v1/ConfigMap"]).into_iter().map(OsString::from));
    let (status, _, stderr) = run_to_end_with_env(&once, &[("RUST_LOG", "info")])?;
    assert!(status.success(), "run --once failed: {stderr}");
    assert!(stderr.contains("created object="), "a real write is logged: {stderr}");
    let down_cms: Api<ConfigMap> = Api::namespaced(env.down.clone(), &ns);
    let synced = down_cms.get("cfg").await?;

    up_cms.patch("cfg", &PatchParams::default(), &Patch::Merge(json!({"data": {"level": "debug"}}))).await?;
    up_cms.create(&PostParams::default(), &configmap(&ns, "new", json!({"x": "y"}))?).await?;
    let mut diff: Vec<OsString> = vec!["diff".into()];
    diff.extend(env.cluster_args()?);
    diff.extend(env.args(&["--resource", "v1/ConfigMap"]).into_iter().map(OsString::from));
    let (status, stdout, stderr) = run_to_end_with_env(&diff, &[("RUST_LOG", "info")])?;
    assert!(status.success(), "diff failed: {stderr}");
    assert!(stdout.contains(&format!("~ ConfigMap {ns}/cfg (update)")), "{stdout}");
    assert!(stdout.contains("-  level: info") && stdout.contains("+  level: debug"), "{stdout}");
    assert!(stdout.contains(&format!("+ ConfigMap {ns}/new (create)")), "{stdout}");
    assert!(!stdout.contains("kcp.io/"), "kcp's annotations are not part of what would be written: {stdout}");
    assert!(stdout.contains("1 to create, 1 to update"), "{stdout}");
    // The log does not claim writes the dry run never made.
    for claim in ["created object=", "updated object="] {
        assert!(!stderr.contains(claim), "diff logged a write ({claim}): {stderr}");
    }
    assert_eq!(down_cms.get("cfg").await?.metadata.resource_version, synced.metadata.resource_version, "diff wrote");
    assert!(down_cms.get_opt("new").await?.is_none(), "diff created an object");
    env.cleanup().await
}

/// The example APIExport in a provider workspace and three tenant workspaces binding it, each
/// with namespace `ns` holding a ConfigMap `cm` (data `tenant: a|b|c`).
struct Tenancy {
    provider: Workspace,
    /// The path of the export's virtual workspace on the kcp server.
    base: String,
    tenants: Vec<(Workspace, Client)>,
    ns: String,
}

impl Tenancy {
    async fn new() -> anyhow::Result<Self> {
        // The provider workspace with the example's APIExport (claims, content RBAC).
        let provider = Workspace::create(&unique_name("kcp-provider")).await?;
        let provider_client = provider.client().await?;
        create_docs(&provider_client, example_docs("apiexport.yaml")?).await?;
        let exports = kcp_api(&provider_client, "APIExport", "apiexports");
        let vw = eventually("the APIExport's virtual workspace URL", Duration::from_secs(60), || async {
            let e = serde_json::to_value(exports.get("downsync").await?)?;
            Ok(e.pointer("/status/virtualWorkspaces/0/url").and_then(Value::as_str).map(str::to_string))
        })
        .await?;

        // Three tenants bind it, each with the same namespace and ConfigMap name.
        let ns = unique_name("app");
        let mut tenants = Vec::new();
        for t in ["a", "b", "c"] {
            let ws = Workspace::create(&unique_name(&format!("kcp-tenant-{t}"))).await?;
            let client = ws.client().await?;
            let mut binding = example_docs("apibinding.yaml")?.remove(0);
            binding["spec"]["reference"]["export"]["path"] = json!(format!("root:{}", provider.name));
            create_docs(&client, vec![binding]).await?;
            let bindings = kcp_api(&client, "APIBinding", "apibindings");
            eventually("the APIBinding to be bound", Duration::from_secs(60), || async {
                let b = serde_json::to_value(bindings.get("downsync").await?)?;
                Ok((b.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")).then_some(()))
            })
            .await?;
            create_namespace(&client, &ns).await?;
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &configmap(&ns, "cm", json!({"tenant": t}))?)
                .await?;
            tenants.push((ws, client));
        }
        // The URL's path, on the server of the admin kubeconfig (kcp names itself 127.0.0.1 here).
        let base = vw.parse::<http::Uri>()?.path().trim_end_matches('/').to_string();
        Ok(Self { provider, base, tenants, ns })
    }

    /// A kubeconfig for the virtual workspace's `/clusters/*`.
    fn all_kubeconfig(&self) -> anyhow::Result<std::path::PathBuf> {
        let kc = downsync_tests::kcp::kubeconfig_at(&format!("{}/clusters/*", self.base))?;
        downsync_tests::kcp::write_kubeconfig(&kc, &format!("vw-{}", self.ns))
    }

    async fn delete(self) -> anyhow::Result<()> {
        for (ws, _) in &self.tenants {
            ws.delete().await?;
        }
        self.provider.delete().await
    }
}

#[tokio::test]
async fn the_example_apiexport_serves_three_workspaces_at_one_url_and_takes_writes_only_per_workspace()
-> anyhow::Result<()> {
    let Tenancy { provider, base, tenants, ns } = Tenancy::new().await?;
    // At `<url>/clusters/*`: all three, told apart only by kcp's annotation.
    let all_path = format!("{base}/clusters/*");
    let wildcard = downsync_tests::kcp::client_for(downsync_tests::kcp::kubeconfig_at(&all_path)?).await?;
    let cms: Api<ConfigMap> = Api::all(wildcard.clone());
    let seen =
        eventually("the three tenants' ConfigMaps at the virtual workspace", Duration::from_secs(60), || async {
            let list = cms.list(&ListParams::default()).await?;
            let ours: Vec<ConfigMap> = list
                .items
                .into_iter()
                .filter(|c| c.metadata.namespace.as_deref() == Some(&ns) && c.metadata.name.as_deref() == Some("cm"))
                .collect();
            Ok((ours.len() == 3).then_some(ours))
        })
        .await?;
    let mut logical: Vec<String> =
        seen.iter().filter_map(|c| c.metadata.annotations.as_ref()?.get("kcp.io/cluster").cloned()).collect();
    logical.sort();
    let mut expected: Vec<String> = tenants.iter().map(|(ws, _)| ws.logical_cluster.clone()).collect();
    expected.sort();
    assert_eq!(logical, expected, "each object names its workspace's logical cluster");

    // Writes are not served at `*`; at `/clusters/<logical cluster>` they are.
    let patch = Patch::Merge(json!({"data": {"written": "through the virtual workspace"}}));
    let at_wildcard = Api::<ConfigMap>::namespaced(wildcard, &ns).patch("cm", &PatchParams::default(), &patch).await;
    assert!(at_wildcard.is_err(), "a write at clusters/* was served: {at_wildcard:?}");
    let (first, first_client) = &tenants[0];
    let one = downsync_tests::kcp::client_for(downsync_tests::kcp::kubeconfig_at(&format!(
        "{base}/clusters/{}",
        first.logical_cluster
    ))?)
    .await?;
    Api::<ConfigMap>::namespaced(one, &ns).patch("cm", &PatchParams::default(), &patch).await?;
    let written = Api::<ConfigMap>::namespaced(first_client.clone(), &ns).get("cm").await?;
    assert_eq!(
        written.data.unwrap_or_default().get("written").map(String::as_str),
        Some("through the virtual workspace")
    );

    Tenancy { provider, base, tenants, ns }.delete().await
}

/// `--upstream-kubeconfig` at the virtual workspace's `/clusters/*` and the downstream.
fn vw_args(kubeconfig: &std::path::Path, ns: &str, target: &str, extra: &[&str]) -> anyhow::Result<Vec<OsString>> {
    let down = clusters()?.downstream;
    let mut a: Vec<OsString> = vec!["--upstream-kubeconfig".into(), kubeconfig.into()];
    a.extend(["--downstream-kubeconfig".into(), down.kubeconfig.into()]);
    for x in ["--resource", "v1/ConfigMap", "--namespace", ns, "--target", target].iter().chain(extra) {
        a.push((*x).into());
    }
    Ok(a)
}

/// The downstream namespaces downsync made for `target`, by the logical cluster their locator names.
async fn namespaces_by_cluster(
    down: &Client,
    target: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let lp = ListParams::default().labels(&format!("downsync.dev/target={target}"));
    let mut out = std::collections::BTreeMap::new();
    for n in Api::<Namespace>::all(down.clone()).list(&lp).await?.items {
        let locator = n.metadata.annotations.unwrap_or_default().remove("downsync.dev/namespace-locator");
        let locator: Value = serde_json::from_str(&locator.unwrap_or_default()).unwrap_or(Value::Null);
        if let (Some(c), Some(name)) = (locator["cluster"].as_str(), n.metadata.name) {
            out.insert(c.to_string(), name);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn three_workspaces_through_the_apiexport_land_apart_and_each_change_stays_in_its_workspace() -> anyhow::Result<()>
{
    let tenancy = Tenancy::new().await?;
    let (ns, target) = (tenancy.ns.clone(), unique_name("kcp-many"));
    let kubeconfig = tenancy.all_kubeconfig()?;
    let down = clusters()?.downstream.client().await?;

    // `diff` before any sync: three creates, each naming its workspace, and nothing written.
    let mut diff: Vec<OsString> = vec!["diff".into()];
    diff.extend(vw_args(&kubeconfig, &ns, &target, &[])?);
    let (status, stdout, stderr) = run_to_end_with_env(&diff, &[])?;
    assert!(status.success(), "diff failed: {stderr}");
    for (ws, _) in &tenancy.tenants {
        let from = format!("/cm [kcp workspace {}, namespace {ns}] (create, with its namespace)", ws.logical_cluster);
        assert!(stdout.contains(&from), "{from} in {stdout}");
    }
    assert!(stdout.contains("3 to create, 0 to update"), "{stdout}");
    assert!(namespaces_by_cluster(&down, &target).await?.is_empty(), "diff created a namespace");

    let a = vw_args(&kubeconfig, &ns, &target, &["--upstream-finalizer"])?;
    let mut d = Daemon::start_with("kcp-many", &a[..4], &a[4..], Some("info,downsync=debug"))?;
    d.wait_ready(Duration::from_secs(120)).await?;

    // Three downstream namespaces, one per workspace, each with its own copy.
    let mapped = namespaces_by_cluster(&down, &target).await?;
    assert_eq!(mapped.len(), 3, "{mapped:?}; log: {}", d.log.display());
    let copy = |ws: &Workspace| {
        let down_ns = mapped.get(&ws.logical_cluster).cloned().unwrap_or_default();
        Api::<ConfigMap>::namespaced(down.clone(), &down_ns)
    };
    let mut versions = Vec::new();
    for ((ws, client), t) in tenancy.tenants.iter().zip(["a", "b", "c"]) {
        let cm = copy(ws).get("cm").await?;
        assert_eq!(cm.data.clone().unwrap_or_default().get("tenant").map(String::as_str), Some(t));
        let ann = cm.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("downsync.dev/upstream-cluster"), Some(&ws.logical_cluster));
        assert_eq!(ann.get("downsync.dev/upstream-namespace"), Some(&ns));
        assert!(!ann.keys().chain(cm.metadata.labels.iter().flatten().map(|(k, _)| k)).any(|k| k.contains("kcp.io/")));
        // The finalizer went to the object's own workspace.
        let up = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        eventually("the finalizer in the workspace", Duration::from_secs(30), || async {
            let cm = up.get("cm").await?;
            Ok(cm.metadata.finalizers.iter().flatten().any(|f| f == "downsync.dev/syncer").then_some(()))
        })
        .await?;
        versions.push(cm.metadata.resource_version);
    }

    // An update in workspace a changes a's copy only.
    let (ws_a, client_a) = &tenancy.tenants[0];
    Api::<ConfigMap>::namespaced(client_a.clone(), &ns)
        .patch("cm", &PatchParams::default(), &Patch::Merge(json!({"data": {"tenant": "a2"}})))
        .await?;
    eventually("a's copy to follow", Duration::from_secs(30), || async {
        let cm = copy(ws_a).get("cm").await?;
        Ok((cm.data.unwrap_or_default().get("tenant").map(String::as_str) == Some("a2")).then_some(()))
    })
    .await?;
    // A delete in workspace b removes b's copy only, and b's object is released.
    let (ws_b, client_b) = &tenancy.tenants[1];
    let up_b = Api::<ConfigMap>::namespaced(client_b.clone(), &ns);
    up_b.delete("cm", &DeleteParams::default()).await?;
    eventually("b's copy, then b's object, to go", Duration::from_secs(30), || async {
        Ok((copy(ws_b).get_opt("cm").await?.is_none() && up_b.get_opt("cm").await?.is_none()).then_some(()))
    })
    .await?;
    let (ws_c, _) = &tenancy.tenants[2];
    assert_eq!(copy(ws_c).get("cm").await?.metadata.resource_version, versions[2], "c's copy was written");
    assert_eq!(copy(ws_a).get("cm").await?.data.unwrap_or_default().get("tenant").map(String::as_str), Some("a2"));
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", d.log.display());
    assert!(d.terminate()?.success());

    // A restart over the synced workspaces writes nothing.
    let before = (copy(ws_a).get("cm").await?.metadata.resource_version, versions[2].clone());
    let mut again = Daemon::start_with("kcp-many-2", &a[..4], &a[4..], Some("info,downsync=debug"))?;
    again.wait_ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after =
        (copy(ws_a).get("cm").await?.metadata.resource_version, copy(ws_c).get("cm").await?.metadata.resource_version);
    assert_eq!(before, after, "a restart wrote");
    let writes = ["created", "updated", "recreated", "deleted"]
        .iter()
        .map(|op| again.metric("downsync_syncs_total", &[&format!("operation=\"{op}\"")]))
        .sum::<anyhow::Result<f64>>()?;
    assert_eq!(writes, 0.0, "log: {}", again.log.display());
    assert!(again.terminate()?.success());

    // With downsync stopped, a change in workspace c: `diff` shows it as c's, and writes nothing.
    let (_, client_c) = &tenancy.tenants[2];
    Api::<ConfigMap>::namespaced(client_c.clone(), &ns)
        .patch("cm", &PatchParams::default(), &Patch::Merge(json!({"data": {"tenant": "c2"}})))
        .await?;
    let (status, stdout, stderr) = run_to_end_with_env(&diff, &[])?;
    assert!(status.success(), "diff failed: {stderr}");
    let c_ns = mapped.get(&ws_c.logical_cluster).cloned().unwrap_or_default();
    let line = format!("~ ConfigMap {c_ns}/cm [kcp workspace {}, namespace {ns}] (update)", ws_c.logical_cluster);
    assert!(stdout.contains(&line) && stdout.contains("+  tenant: c2"), "{line} in {stdout}");
    assert!(stdout.contains("0 to create, 1 to update, 0 to recreate, 0 to delete, 1 unchanged"), "{stdout}");
    assert_eq!(copy(ws_c).get("cm").await?.metadata.resource_version, versions[2], "diff wrote");

    let _ = std::fs::remove_file(kubeconfig);
    for name in mapped.values() {
        let _ = Api::<Namespace>::all(down.clone()).delete(name, &DeleteParams::background()).await;
    }
    tenancy.delete().await
}

#[tokio::test]
async fn a_workspace_that_revokes_its_binding_loses_its_copies_and_the_others_keep_theirs() -> anyhow::Result<()> {
    let tenancy = Tenancy::new().await?;
    let (ns, target) = (tenancy.ns.clone(), unique_name("kcp-unbind"));
    let kubeconfig = tenancy.all_kubeconfig()?;
    let down = clusters()?.downstream.client().await?;
    let a = vw_args(&kubeconfig, &ns, &target, &[])?;
    let mut d = Daemon::start_with("kcp-unbind", &a[..4], &a[4..], Some("info,downsync=debug"))?;
    d.wait_ready(Duration::from_secs(120)).await?;
    let mapped = namespaces_by_cluster(&down, &target).await?;
    assert_eq!(mapped.len(), 3, "{mapped:?}; log: {}", d.log.display());
    let copy = |ws: &Workspace| {
        let down_ns = mapped.get(&ws.logical_cluster).cloned().unwrap_or_default();
        Api::<ConfigMap>::namespaced(down.clone(), &down_ns)
    };
    let mut versions = Vec::new();
    for (ws, _) in &tenancy.tenants {
        versions.push(copy(ws).get("cm").await?.metadata.resource_version);
    }

    // Workspace c revokes the export's access: its binding's permission claims rejected, its
    // objects leave the export's view. (Deleting an APIBinding is not enough in kcp v0.26: the
    // claim labels stay on the objects, and the virtual workspace keeps serving them.)
    let (ws_c, client_c) = &tenancy.tenants[2];
    let bindings_c = kcp_api(client_c, "APIBinding", "apibindings");
    let mut claims = serde_json::to_value(bindings_c.get("downsync").await?)?["spec"]["permissionClaims"].clone();
    for c in claims.as_array_mut().into_iter().flatten() {
        c["state"] = json!("Rejected");
    }
    bindings_c
        .patch("downsync", &PatchParams::default(), &Patch::Merge(json!({"spec": {"permissionClaims": claims}})))
        .await?;
    let started = std::time::Instant::now();
    eventually("c's copy to go", Duration::from_secs(120), || async {
        Ok(copy(ws_c).get_opt("cm").await?.is_none().then_some(()))
    })
    .await?;
    eprintln!("claims rejected: c's copy deleted after {:.1} s", started.elapsed().as_secs_f64());
    // The downstream namespace made for c goes too: nothing of c is left there.
    let c_ns = mapped.get(&ws_c.logical_cluster).cloned().unwrap_or_default();
    eventually("c's downstream namespace to go", Duration::from_secs(60), || async {
        let n = Api::<Namespace>::all(down.clone()).get_opt(&c_ns).await?;
        Ok(n.is_none_or(|n| n.metadata.deletion_timestamp.is_some()).then_some(()))
    })
    .await?;
    // The object itself is still in c, untouched; a's and b's copies were not written.
    assert!(Api::<ConfigMap>::namespaced(client_c.clone(), &ns).get_opt("cm").await?.is_some());
    for (i, (ws, _)) in tenancy.tenants.iter().take(2).enumerate() {
        assert_eq!(copy(ws).get("cm").await?.metadata.resource_version, versions[i], "a copy of another workspace");
    }
    assert!(d.terminate()?.success());
    let _ = std::fs::remove_file(kubeconfig);
    for name in mapped.values() {
        let _ = Api::<Namespace>::all(down.clone()).delete(name, &DeleteParams::background()).await;
    }
    tenancy.delete().await
}

/// The kind the example APIExport exports (`examples/kcp/apiexport.yaml`): Widget, with a status
/// subresource.
const EXAMPLE_GROUP: &str = "examples.downsync.dev";

fn example_widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(EXAMPLE_GROUP, "v1", "Widget");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
}

/// The downstream CRD of the example's exported kind: the example's APIResourceSchema, as a CRD
/// (the same group, names, scope and versions), so the two cannot drift apart.
fn example_widget_crd() -> anyhow::Result<Value> {
    let schema = example_docs("apiexport.yaml")?
        .into_iter()
        .find(|d| d["kind"] == "APIResourceSchema")
        .ok_or_else(|| anyhow::anyhow!("examples/kcp/apiexport.yaml has no APIResourceSchema"))?;
    let spec = &schema["spec"];
    let versions: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mut v = v.clone();
            v["schema"] = json!({"openAPIV3Schema": v["schema"].take()});
            v
        })
        .collect();
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", spec["names"]["plural"].as_str().unwrap_or_default(), EXAMPLE_GROUP)},
        "spec": {"group": spec["group"], "names": spec["names"], "scope": spec["scope"], "versions": versions}
    }))
}

#[tokio::test]
async fn three_workspaces_through_the_apiexport_each_get_the_status_of_their_own_copy() -> anyhow::Result<()> {
    let tenancy = Tenancy::new().await?;
    let (ns, target) = (tenancy.ns.clone(), unique_name("kcp-status-many"));
    let kubeconfig = tenancy.all_kubeconfig()?;
    let down = clusters()?.downstream.client().await?;
    install_crd(&down, example_widget_crd()?, &GroupVersionKind::gvk(EXAMPLE_GROUP, "v1", "Widget")).await?;
    // The same Widget, `w` in namespace `ns`, in each workspace, through the exported API.
    for ((_, client), t) in tenancy.tenants.iter().zip(["a", "b", "c"]) {
        let w = json!({"apiVersion": format!("{EXAMPLE_GROUP}/v1"), "kind": "Widget",
            "metadata": {"name": "w", "namespace": ns}, "spec": {"tenant": t}});
        let (api, w): (_, DynamicObject) = (example_widgets(client, &ns), serde_json::from_value(w)?);
        // A binding reports Bound a moment before the workspace serves the exported kind.
        eventually("the Widget created in its workspace", Duration::from_secs(30), || async {
            match api.create(&PostParams::default(), &w).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
    }

    let resource = format!("{EXAMPLE_GROUP}/v1/Widget");
    let a = vw_args(&kubeconfig, &ns, &target, &["--resource", &resource, "--status-upsync"])?;
    let mut d = Daemon::start_with("kcp-status-many", &a[..4], &a[4..], Some("info,downsync=debug"))?;
    d.wait_ready(Duration::from_secs(120)).await?;
    let mapped = namespaces_by_cluster(&down, &target).await?;
    assert_eq!(mapped.len(), 3, "{mapped:?}; log: {}", d.log.display());
    let copy = |ws: &Workspace| example_widgets(&down, mapped.get(&ws.logical_cluster).map_or("", String::as_str));
    for ((ws, _), t) in tenancy.tenants.iter().zip(["a", "b", "c"]) {
        let w = eventually("the Widget's copy", Duration::from_secs(30), || async { Ok(copy(ws).get_opt("w").await?) })
            .await?;
        assert_eq!(w.data.pointer("/spec/tenant"), Some(&json!(t)), "{ws:?}");
    }

    // The downstream controller (this test) reports on a's copy only: a's object gets it, and
    // b's and c's get nothing.
    let status_of = |t: &str| json!({"observedTenant": t, "ready": true});
    let (ws_a, client_a) = &tenancy.tenants[0];
    copy(ws_a).patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": status_of("a")}))).await?;
    let started = std::time::Instant::now();
    let up_status = |client: &Client| {
        let api = example_widgets(client, &ns);
        async move { Ok::<_, anyhow::Error>(api.get("w").await?.data.get("status").cloned()) }
    };
    eventually("a's status in workspace a", Duration::from_secs(30), || async {
        Ok((up_status(client_a).await? == Some(status_of("a"))).then_some(()))
    })
    .await?;
    eprintln!("a's copy's status in workspace a after {:.2} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, client) in &tenancy.tenants[1..] {
        assert_eq!(up_status(client).await?, None, "another workspace got a's status");
    }

    // Then each copy gets a status of its own: each workspace gets its own copy's, no other.
    for ((ws, _), t) in tenancy.tenants[1..].iter().zip(["b", "c"]) {
        copy(ws).patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": status_of(t)}))).await?;
    }
    for ((_, client), t) in tenancy.tenants.iter().zip(["a", "b", "c"]) {
        eventually(&format!("{t}'s status in workspace {t}"), Duration::from_secs(30), || async {
            Ok((up_status(client).await? == Some(status_of(t))).then_some(()))
        })
        .await?;
    }

    // `explain` takes the workspace (CLUSTER/NAMESPACE/NAME) and names it; without one it says
    // which workspaces hold the object.
    let addr = format!("http://{}", d.addr);
    let object = format!("{}/{ns}/w", ws_a.logical_cluster);
    let (code, text, err) = run_to_end(&["explain", "Widget", &object, "--addr", &addr, "--json"].map(OsString::from))?;
    assert!(code.success(), "{err}");
    let answer: Value = serde_json::from_str(&text)?;
    assert_eq!(
        (answer["workspace"].as_str(), answer["upstreamNamespace"].as_str()),
        (Some(ws_a.logical_cluster.as_str()), Some(ns.as_str())),
        "{text}"
    );
    let named = format!("(kcp workspace {})", ws_a.logical_cluster);
    assert!(answer["object"].as_str().is_some_and(|o| o.ends_with(&named)), "{text}");
    let (code, text, err) = run_to_end(&["explain", "Widget", &object, "--addr", &addr].map(OsString::from))?;
    assert!(code.success() && text.contains(&format!("from kcp workspace {}", ws_a.logical_cluster)), "{text}{err}");
    let (code, _, err) = run_to_end(&["explain", "Widget", &format!("{ns}/w"), "--addr", &addr].map(OsString::from))?;
    assert!(!code.success() && err.contains("name the workspace"), "{err}");
    for (ws, _) in &tenancy.tenants {
        assert!(err.contains(&ws.logical_cluster), "{} not named in: {err}", ws.logical_cluster);
    }
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", d.log.display());
    assert!(d.terminate()?.success());

    let _ = std::fs::remove_file(kubeconfig);
    for name in mapped.values() {
        let _ = Api::<Namespace>::all(down.clone()).delete(name, &DeleteParams::background()).await;
    }
    tenancy.delete().await
}
