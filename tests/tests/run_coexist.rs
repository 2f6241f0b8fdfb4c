//! `downsync run` sharing the downstream cluster with its other writers, between two real
//! control planes, with only the built-in rules: an HPA stand-in that scales a Deployment
//! whose upstream never asked for `replicas` is never fought (under `replace` and under
//! server-side apply); upstream that did ask wins, unless the drift policy keeps the HPA's
//! fields; a MutatingAdmissionPolicy that changes every write never causes a write; a
//! person's `kubectl edit` is reverted once and named; a writer that flips a field every
//! second is stopped by the write-loop guard. Writes are counted from the downstream API
//! server's audit log, not from downsync's own counters.

use std::time::Duration;

use downsync_tests::admission::{create_injecting_policy, delete_injecting_policy};
use downsync_tests::audit::downsync_writes;
use downsync_tests::daemon::Daemon;
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Starts `downsync run` over `ns` with `resources` (YAML of the `resources:` list) and the
/// rest of the config file in `extra`.
async fn start(ns: &str, resources: &str, extra: &str) -> anyhow::Result<Daemon> {
    let config = std::env::temp_dir().join(format!("downsync-coexist-{ns}.yaml"));
    std::fs::write(&config, format!("resources:\n{resources}\n{extra}\n"))?;
    let args = ["--config", &config.display().to_string(), "--namespace", ns, "--target", ns].map(String::from);
    let mut d = Daemon::start("coexist", &args)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    Ok(d)
}

const DEPLOYMENTS: &str = "- {apiVersion: apps/v1, kind: Deployment}";
const SSA: &str = "sync: {strategy: {type: serverSideApply}}";

/// A Deployment as `kubectl create` sends it: one container `app`; `replicas` only if given.
fn mk_deployment(ns: &str, name: &str, image: &str, replicas: Option<i32>) -> anyhow::Result<Deployment> {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image, "env": [{"name": "A", "value": "1"}]}]}}});
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    Ok(serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}, "spec": spec}))?)
}

/// Creates it upstream by server-side apply, as `kubectl apply --server-side` does: the
/// managedFields then hold exactly the fields sent, not the defaults the server filled in.
async fn create_upstream(env: &TestEnv, d: Deployment) -> anyhow::Result<()> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let api = Api::<Deployment>::namespaced(env.upstream.clone(), &env.namespace);
    api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&d)).await?;
    Ok(())
}

/// Creates it upstream with the real `kubectl apply` (client-side, the default): the API
/// server records `kubectl-client-side-apply` as owning every field, defaults included, and
/// the applied fields are in the last-applied-configuration annotation.
fn kubectl_apply_upstream(d: &Deployment) -> anyhow::Result<()> {
    use std::io::Write as _;
    let kubeconfig = std::env::var("DOWNSYNC_UPSTREAM_KUBECONFIG")?;
    let mut child = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?.write_all(&serde_json::to_vec(d)?)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Scales through the `scale` subresource as manager `hpa`, as an HorizontalPodAutoscaler does.
async fn hpa_scale(client: &Client, ns: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    let pp = PatchParams { field_manager: Some("hpa".into()), ..PatchParams::default() };
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    Api::<Deployment>::namespaced(client.clone(), ns).patch_scale(name, &pp, &patch).await?;
    Ok(())
}

async fn deployment(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<Deployment>> {
    Ok(Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await?)
}

fn as_json(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(d).unwrap_or_default()
}

fn replicas(d: &Deployment) -> Option<i32> {
    as_json(d).pointer("/spec/replicas").and_then(serde_json::Value::as_i64).and_then(|r| i32::try_from(r).ok())
}

fn image(d: &Deployment) -> Option<String> {
    as_json(d).pointer("/spec/template/spec/containers/0/image").and_then(|v| v.as_str().map(str::to_string))
}

/// downsync's successful writes (not dry runs) of one object since `since`, from the audit log.
fn writes_since(resource: &str, ns: &str, name: &str, since: Timestamp) -> anyhow::Result<usize> {
    Ok(downsync_writes()?
        .iter()
        .filter(|w| w.resource == resource && w.namespace.as_deref() == Some(ns) && w.name.as_deref() == Some(name))
        .filter(|w| w.succeeded() && !w.dry_run && w.received >= since)
        .count())
}

/// The messages of the upstream Events of `reason` in `ns`.
async fn events(up: &Client, ns: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let list = Api::<Event>::namespaced(up.clone(), ns).list(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).filter_map(|e| e.message).collect())
}

/// The HPA case: upstream never asked for `replicas` (the server defaulted it); downstream an
/// HPA stand-in scales to 3. No write of the Deployment in 30 s, `replicas` stays 3, and an
/// upstream image change made meanwhile syncs without touching `replicas`.
async fn hpa_is_never_fought(test: &str, extra: &str, client_side_apply: bool) -> anyhow::Result<()> {
    let env = TestEnv::new(test).await?;
    let ns = env.namespace.clone();
    let web = mk_deployment(&ns, "web", "nginx:1", None)?;
    if client_side_apply {
        kubectl_apply_upstream(&web)?;
    } else {
        create_upstream(&env, web).await?;
    }
    let d = start(&ns, DEPLOYMENTS, extra).await?;
    eventually("the Deployment downstream", Duration::from_secs(30), || async {
        Ok(deployment(&env.downstream, &ns, "web").await?.filter(|d| replicas(d) == Some(1)).map(|_| ()))
    })
    .await?;

    hpa_scale(&env.downstream, &ns, "web", 3).await?;
    let since = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let live = deployment(&env.downstream, &ns, "web").await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(replicas(&live), Some(3), "the HPA's replicas stay");
    assert_eq!(writes_since("deployments", &ns, "web", since)?, 0, "no write of the Deployment in 30 s");

    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}});
    let pp = PatchParams { field_manager: Some("kubectl-patch".into()), ..PatchParams::default() };
    up.patch("web", &pp, &Patch::Strategic(patch)).await?;
    let live = eventually("the image change downstream", Duration::from_secs(30), || async {
        Ok(deployment(&env.downstream, &ns, "web").await?.filter(|d| image(d).as_deref() == Some("nginx:2")))
    })
    .await?;
    assert_eq!(replicas(&live), Some(3), "an upstream change does not reset the HPA's replicas");
    assert!(events(&env.upstream, &ns, "Drift").await?.is_empty(), "no drift: upstream never asked for replicas");
    assert!(events(&env.upstream, &ns, "FieldConflict").await?.is_empty());
    d.terminate()?;
    env.cleanup().await
}

#[tokio::test]
async fn an_hpa_scaling_what_upstream_never_asked_for_is_not_fought_under_replace() -> anyhow::Result<()> {
    hpa_is_never_fought("coexist-hpa-replace", "", false).await
}

#[tokio::test]
async fn an_hpa_scaling_what_upstream_never_asked_for_is_not_fought_under_merge() -> anyhow::Result<()> {
    hpa_is_never_fought("coexist-hpa-merge", "sync: {strategy: {type: merge}}", false).await
}

#[tokio::test]
async fn an_hpa_is_not_fought_when_upstream_was_made_by_client_side_kubectl_apply() -> anyhow::Result<()> {
    hpa_is_never_fought("coexist-hpa-csa", "", true).await
}

#[tokio::test]
async fn an_hpa_scaling_what_upstream_never_asked_for_is_not_fought_under_server_side_apply() -> anyhow::Result<()> {
    hpa_is_never_fought("coexist-hpa-ssa", SSA, false).await
}

#[tokio::test]
async fn upstream_that_asked_for_replicas_wins_and_a_keep_policy_lets_the_hpa_win() -> anyhow::Result<()> {
    let env = TestEnv::new("coexist-asked").await?;
    let ns = env.namespace.clone();
    create_upstream(&env, mk_deployment(&ns, "asked", "nginx:1", Some(1))?).await?;
    let d = start(&ns, DEPLOYMENTS, "").await?;
    let has = |name: &'static str, want: i32| {
        let (down, ns) = (env.downstream.clone(), ns.clone());
        move || {
            let (down, ns) = (down.clone(), ns.clone());
            async move { Ok(deployment(&down, &ns, name).await?.filter(|d| replicas(d) == Some(want)).map(|_| ())) }
        }
    };
    eventually("asked downstream", Duration::from_secs(30), has("asked", 1)).await?;
    hpa_scale(&env.downstream, &ns, "asked", 3).await?;
    eventually("upstream's replicas back", Duration::from_secs(30), has("asked", 1)).await?;
    let drift = eventually("a Drift Event naming the HPA", Duration::from_secs(30), || async {
        Ok(events(&env.upstream, &ns, "Drift").await?.into_iter().find(|m| m.contains("/spec/replicas by hpa")))
    })
    .await?;
    assert!(drift.contains("reverted"), "{drift}");
    let m = d.metric("downsync_drift_total", &["kind=\"Deployment\"", "manager=\"hpa\"", "action=\"revert\""])?;
    assert!(m >= 1.0, "downsync_drift_total counts it: {m}");
    d.terminate()?;

    // The same, with the HPA's fields kept: the HPA wins and downsync writes nothing.
    let keep = "- {apiVersion: apps/v1, kind: Deployment, drift: {managers: {hpa: keep}}}";
    create_upstream(&env, mk_deployment(&ns, "kept", "nginx:1", Some(1))?).await?;
    let d = start(&ns, keep, "").await?;
    eventually("kept downstream", Duration::from_secs(30), has("kept", 1)).await?;
    hpa_scale(&env.downstream, &ns, "kept", 3).await?;
    let since = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let live = deployment(&env.downstream, &ns, "kept").await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(replicas(&live), Some(3), "the kept HPA wins");
    assert_eq!(writes_since("deployments", &ns, "kept", since)?, 0);
    // An upstream change still syncs, and leaves the HPA's field alone.
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    up.patch("kept", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}}))).await?;
    let live = eventually("the label change downstream", Duration::from_secs(30), || async {
        let d = deployment(&env.downstream, &ns, "kept").await?;
        Ok(d.filter(|d| d.metadata.labels.as_ref().and_then(|l| l.get("tier")).is_some()))
    })
    .await?;
    assert_eq!(replicas(&live), Some(3), "still the HPA's");
    d.terminate()?;
    env.cleanup().await
}

#[tokio::test]
async fn a_server_side_apply_conflict_is_named_and_never_blocks_the_other_fields() -> anyhow::Result<()> {
    let env = TestEnv::new("coexist-ssa-conflict").await?;
    let ns = env.namespace.clone();
    create_upstream(&env, mk_deployment(&ns, "web", "nginx:1", Some(1))?).await?;
    let d = start(&ns, DEPLOYMENTS, SSA).await?;
    eventually("web downstream", Duration::from_secs(30), || async {
        Ok(deployment(&env.downstream, &ns, "web").await?.map(|_| ()))
    })
    .await?;
    hpa_scale(&env.downstream, &ns, "web", 3).await?;
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    up.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}}))).await?;
    eventually("the label change downstream despite the conflict", Duration::from_secs(30), || async {
        let d = deployment(&env.downstream, &ns, "web").await?;
        Ok(d.filter(|d| d.metadata.labels.as_ref().and_then(|l| l.get("tier")).is_some()).map(|_| ()))
    })
    .await?;
    let conflict = eventually("a FieldConflict Event naming the HPA", Duration::from_secs(30), || async {
        Ok(events(&env.upstream, &ns, "FieldConflict").await?.into_iter().next())
    })
    .await?;
    assert!(conflict.contains("/spec/replicas") && conflict.contains("\"hpa\""), "{conflict}");
    let live = deployment(&env.downstream, &ns, "web").await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(replicas(&live), Some(3), "without force, the HPA's field is not taken");
    d.terminate()?;
    env.cleanup().await
}

async fn admission_is_never_fought(test: &str, extra: &str) -> anyhow::Result<()> {
    let env = TestEnv::new(test).await?;
    let ns = env.namespace.clone();
    create_injecting_policy(&env.downstream, &ns).await?;
    create_upstream(&env, mk_deployment(&ns, "web", "nginx:1", None)?).await?;
    let d = start(&ns, DEPLOYMENTS, extra).await?;
    let injected = |d: &Deployment| {
        let json = as_json(d);
        let env_names: Vec<&str> = json
            .pointer("/spec/template/spec/containers/0/env")
            .and_then(serde_json::Value::as_array)
            .map(|e| e.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        d.metadata.labels.as_ref().and_then(|l| l.get("injected")).is_some() && env_names.contains(&"INJECTED")
    };
    eventually("the mutated Deployment downstream", Duration::from_secs(30), || async {
        Ok(deployment(&env.downstream, &ns, "web").await?.filter(|d| injected(d)).map(|_| ()))
    })
    .await?;
    // Something else keeps touching the object downstream, so downsync looks at it again and
    // again: each look must find nothing to write.
    let since = Timestamp::now();
    let api: Api<Deployment> = Api::namespaced(env.downstream.clone(), &ns);
    let pp = PatchParams { field_manager: Some("labeller".into()), ..PatchParams::default() };
    for i in 0..10 {
        let patch = json!({"metadata": {"annotations": {"example.com/touched": i.to_string()}}});
        api.patch("web", &pp, &Patch::Merge(patch)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(writes_since("deployments", &ns, "web", since)?, 0, "no write in 30 s");
    let live = deployment(&env.downstream, &ns, "web").await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert!(injected(&live), "the mutation stays");
    assert!(events(&env.upstream, &ns, "Drift").await?.is_empty(), "admission is not drift");

    let since = Timestamp::now();
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}});
    up.patch("web", &PatchParams::default(), &Patch::Strategic(patch)).await?;
    eventually("the image change downstream", Duration::from_secs(30), || async {
        Ok(deployment(&env.downstream, &ns, "web")
            .await?
            .filter(|d| image(d).as_deref() == Some("nginx:2"))
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(writes_since("deployments", &ns, "web", since)?, 1, "an upstream change is written once");
    let live = deployment(&env.downstream, &ns, "web").await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert!(injected(&live), "the mutation stays");
    d.terminate()?;
    delete_injecting_policy(&env.downstream, &ns).await?;
    env.cleanup().await
}

#[tokio::test]
async fn a_mutating_admission_policy_is_never_fought_under_replace() -> anyhow::Result<()> {
    admission_is_never_fought("coexist-admission-replace", "").await
}

#[tokio::test]
async fn a_mutating_admission_policy_is_never_fought_under_strategic_merge() -> anyhow::Result<()> {
    admission_is_never_fought("coexist-admission-smp", "sync: {strategy: {type: strategicMerge}}").await
}

#[tokio::test]
async fn a_mutating_admission_policy_is_never_fought_under_server_side_apply() -> anyhow::Result<()> {
    admission_is_never_fought("coexist-admission-ssa", SSA).await
}

const CONFIGMAPS: &str = "- {apiVersion: v1, kind: ConfigMap}";

async fn configmap(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<ConfigMap>> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await?)
}

fn value_of(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get("v").cloned()
}

#[tokio::test]
async fn a_kubectl_edit_downstream_is_reverted_once_and_named() -> anyhow::Result<()> {
    let env = TestEnv::new("coexist-edit").await?;
    let ns = env.namespace.clone();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "conf", "namespace": ns}, "data": {"v": "original"}}))?;
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).create(&PostParams::default(), &cm).await?;
    let d = start(&ns, CONFIGMAPS, "").await?;
    eventually("conf downstream", Duration::from_secs(30), || async {
        Ok(configmap(&env.downstream, &ns, "conf").await?.filter(|c| value_of(c).as_deref() == Some("original")))
    })
    .await?;

    // A person edits it with the real kubectl (built with the control plane), as `kubectl-edit`.
    let kubeconfig = std::env::var("DOWNSYNC_DOWNSTREAM_KUBECONFIG")?;
    let since = Timestamp::now();
    let out = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "-n", &ns, "edit", "configmap", "conf"])
        .env("KUBE_EDITOR", "sed -i s/original/edited/")
        .output()?;
    assert!(out.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&out.stderr));
    let drift = eventually("a Drift Event naming kubectl-edit", Duration::from_secs(30), || async {
        Ok(events(&env.upstream, &ns, "Drift").await?.into_iter().next())
    })
    .await?;
    assert!(drift.contains("/data/v by kubectl-edit (Update)") && drift.contains("reverted"), "{drift}");
    eventually("the upstream value back", Duration::from_secs(30), || async {
        Ok(configmap(&env.downstream, &ns, "conf").await?.filter(|c| value_of(c).as_deref() == Some("original")))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(writes_since("configmaps", &ns, "conf", since)?, 1, "reverted once");
    let m =
        d.metric("downsync_drift_total", &["kind=\"ConfigMap\"", "manager=\"kubectl-edit\"", "action=\"revert\""])?;
    assert_eq!(m, 1.0, "counted once");
    let logged = d.log_text();
    assert!(logged.contains("drifted downstream") && logged.contains("kubectl-edit"), "the log names it");
    d.terminate()?;
    env.cleanup().await
}

#[tokio::test]
async fn a_writer_flipping_a_field_every_second_is_stopped_by_the_write_loop_guard() -> anyhow::Result<()> {
    let env = TestEnv::new("coexist-loop").await?;
    let ns = env.namespace.clone();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "flip", "namespace": ns}, "data": {"v": "upstream"}}))?;
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).create(&PostParams::default(), &cm).await?;
    let d = start(&ns, CONFIGMAPS, "").await?;
    eventually("flip downstream", Duration::from_secs(30), || async {
        Ok(configmap(&env.downstream, &ns, "flip").await?.map(|_| ()))
    })
    .await?;

    let api: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let pp = PatchParams { field_manager: Some("flipper".into()), ..PatchParams::default() };
    let flip = Patch::Merge(json!({"data": {"v": "flipped"}}));
    let mut engaged_at = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(100) {
        api.patch("flip", &pp, &flip).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if engaged_at.is_none() && !events(&env.upstream, &ns, "WriteLoop").await?.is_empty() {
            engaged_at = Some((std::time::Instant::now(), Timestamp::now()));
        }
        if let Some((at, _)) = engaged_at
            && at.elapsed() >= Duration::from_secs(60)
        {
            break;
        }
    }
    let Some((_, engaged)) = engaged_at else { anyhow::bail!("the guard never engaged") };
    let message = events(&env.upstream, &ns, "WriteLoop").await?.remove(0);
    assert!(message.contains("/data/v by flipper (Update)"), "names field and manager: {message}");
    let after = writes_since("configmaps", &ns, "flip", engaged)?;
    assert!(after <= 10, "at most 10 writes in the minute after the guard engaged: {after}");
    let loops = d.metric("downsync_sync_failures_total", &["kind=\"ConfigMap\"", "reason=\"WriteLoop\""])?;
    assert!(loops >= 1.0, "counted: {loops}");

    // An upstream change starts over: written at once.
    let up: Api<ConfigMap> = Api::namespaced(env.upstream.clone(), &ns);
    up.patch("flip", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "new"}}))).await?;
    eventually("the upstream change downstream", Duration::from_secs(30), || async {
        Ok(configmap(&env.downstream, &ns, "flip").await?.filter(|c| value_of(c).as_deref() == Some("new")))
    })
    .await?;
    d.terminate()?;
    env.cleanup().await
}
