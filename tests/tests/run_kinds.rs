//! `downsync run` with kinds that come later: a custom kind whose CRD is installed after the
//! start is taken up without a restart while every other kind syncs; a kind whose CRD is
//! deleted waits for it again without a crash or a storm; CustomResourceDefinitions synced
//! themselves are applied, and established, before the objects of their kinds.

use std::time::{Duration, Instant};

use anyhow::Context;
use downsync_tests::daemon::Daemon;
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// A namespaced custom kind `kind` in `group`, version v1, with an open schema; `labels` on the
/// CRD itself.
fn mk_crd(group: &str, kind: &str, labels: serde_json::Value) -> anyhow::Result<CustomResourceDefinition> {
    let plural = format!("{}s", kind.to_lowercase());
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}"), "labels": labels},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    }))?)
}

fn resource(group: &str, kind: &str) -> ApiResource {
    let mut ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind));
    ar.plural = format!("{}s", kind.to_lowercase());
    ar
}

fn mk_object(group: &str, kind: &str, name: &str, size: &str) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": kind,
        "metadata": {"name": name}, "spec": {"size": size}
    }))?)
}

async fn install_crd(client: &Client, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.create(&PostParams::default(), crd).await.context("creating the CRD")?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    eventually("the CRD to be established", Duration::from_secs(30), || async {
        Ok(api.get_opt(&name).await?.is_some_and(|c| established(&c)).then_some(()))
    })
    .await
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

async fn delete_crd(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    eventually("the CRD to be gone", Duration::from_secs(60), || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

async fn size_of(api: &Api<DynamicObject>, name: &str) -> anyhow::Result<Option<String>> {
    match api.get_opt(name).await {
        Ok(o) => Ok(o.and_then(|o| o.data["spec"]["size"].as_str().map(str::to_string))),
        // The kind itself is not served (yet, or any more).
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a config syncing ConfigMaps and `kinds` (`apiVersion`, `kind`, label selector) from the
/// test's namespace.
fn config(env: &TestEnv, kinds: &[(&str, &str, Option<&str>)]) -> anyhow::Result<std::path::PathBuf> {
    let mut resources = vec![json!({"apiVersion": "v1", "kind": "ConfigMap"})];
    for (api_version, kind, selector) in kinds {
        let mut r = json!({"apiVersion": api_version, "kind": kind});
        if let Some(s) = selector {
            r["labelSelector"] = json!(s);
        }
        resources.push(r);
    }
    let path = std::env::temp_dir().join(format!("{}-kinds.yaml", env.namespace));
    std::fs::write(&path, serde_json::to_string(&json!({"resources": resources}))?)?;
    Ok(path)
}

fn args(env: &TestEnv, config: &std::path::Path) -> Vec<String> {
    let ns = env.namespace.as_str();
    ["--config", &config.display().to_string(), "--namespace", ns, "--target", ns].map(String::from).to_vec()
}

async fn cm_value(api: &Api<ConfigMap>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(api.get_opt(name).await?.and_then(|c| c.data).and_then(|d| d.get("v").cloned()))
}

#[tokio::test]
async fn a_kind_whose_crd_comes_later_is_synced_without_a_restart_and_one_whose_crd_goes_waits() -> anyhow::Result<()> {
    let env = TestEnv::new("run-kinds-later").await?;
    let ns = env.namespace.clone();
    let group = format!("{ns}.later.example.com");
    let crd = mk_crd(&group, "Widget", json!({}))?;
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let outcome = later(&env, &group, &crd).await;
    for client in [&env.upstream, &env.downstream] {
        delete_crd(client, &crd_name).await?;
    }
    outcome?;
    env.cleanup().await
}

async fn later(env: &TestEnv, group: &str, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let ns = env.namespace.as_str();
    let (up_cm, down_cm) = (
        Api::<ConfigMap>::namespaced(env.upstream.clone(), ns),
        Api::<ConfigMap>::namespaced(env.downstream.clone(), ns),
    );
    let ar = resource(group, "Widget");
    let (up_w, down_w): (Api<DynamicObject>, Api<DynamicObject>) =
        (Api::namespaced_with(env.upstream.clone(), ns, &ar), Api::namespaced_with(env.downstream.clone(), ns, &ar));
    let cm = |v: &str| -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"v": v}}))?)
    };
    up_cm.create(&PostParams::default(), &cm("1")?).await?;

    let config = config(env, &[(&format!("{group}/v1"), "Widget", None)])?;
    let mut d = Daemon::start("kinds-later", &args(env, &config))?;
    // Not served on either side: reported, and the other kinds sync; the pod is ready.
    d.wait_ready(Duration::from_secs(60)).await?;
    eventually("the ConfigMap downstream", Duration::from_secs(30), || async {
        Ok((cm_value(&down_cm, "cfg").await?.as_deref() == Some("1")).then_some(()))
    })
    .await?;
    let (code, verbose) = d.get_path("/readyz?verbose")?;
    assert_eq!(code, 200, "{verbose}");
    assert!(verbose.contains(&format!("kind Widget ({group}/v1) is not served upstream")), "{verbose}");
    assert_eq!(d.metric("downsync_kind_served", &[r#"kind="Widget""#])?, 0.0);
    assert_eq!(d.metric("downsync_kind_served", &[r#"kind="ConfigMap""#])?, 1.0);
    let waits = d.log_text().matches("is not served upstream: waiting for its CRD").count();
    assert_eq!(waits, 1, "logged once:\n{}", d.log_text());
    // Waiting is not polling: a look per burst of CRD events (other tests on these clusters make
    // some) and one every 30 s; a loop that woke itself made thousands in these 5 s.
    let looks = |log: &str| log.matches("looking again at the kinds that wait").count();
    let before = looks(&d.log_text());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = looks(&d.log_text());
    assert!(after - before <= 20, "{} looks in 5 s:\n{}", after - before, d.log_text());

    // The CRD on both sides, then a Widget upstream: synced, no restart.
    install_crd(&env.upstream, crd).await?;
    install_crd(&env.downstream, crd).await?;
    let established = Instant::now();
    up_w.create(&PostParams::default(), &mk_object(group, "Widget", "w1", "small")?).await?;
    eventually("the Widget downstream", Duration::from_secs(90), || async {
        Ok((size_of(&down_w, "w1").await?.as_deref() == Some("small")).then_some(()))
    })
    .await?;
    eprintln!(
        "pick-up: the Widget was downstream {:.1} s after its CRD was established on both sides",
        established.elapsed().as_secs_f64()
    );
    assert!(d.log_text().contains("kind is served on both sides now; syncing it"), "{}", d.log_text());
    assert_eq!(d.metric("downsync_kind_served", &[r#"kind="Widget""#])?, 1.0);
    let (_, verbose) = d.get_path("/readyz?verbose")?;
    assert!(verbose.contains("kinds: every configured kind is synced"), "{verbose}");

    // The CRD deleted downstream (taking the copies with it): no crash, no storm; the kind
    // waits again, ConfigMaps keep syncing, and the CRD back brings the Widget back.
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    delete_crd(&env.downstream, &crd_name).await?;
    eventually("the kind to wait again", Duration::from_secs(60), || async {
        Ok((d.metric("downsync_kind_served", &[r#"kind="Widget""#])? == 0.0).then_some(()))
    })
    .await?;
    let watch_failures = |log: &str| log.lines().filter(|l| l.contains("watch failed") && l.contains("Widget")).count();
    let failures_before = watch_failures(&d.log_text());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(d.healthz()?.0, 200, "alive");
    let failures_after = watch_failures(&d.log_text());
    assert!(failures_after - failures_before <= 1, "a storm of watch retries:\n{}", d.log_text());
    assert_eq!(d.metric("downsync_connected", &[r#"side="downstream""#])?, 1.0, "the side is not lost");
    let (_, verbose) = d.get_path("/readyz?verbose")?;
    assert!(verbose.contains(&format!("kind Widget ({group}/v1) is not served downstream")), "{verbose}");
    up_cm.patch("cfg", &Default::default(), &kube::api::Patch::Merge(json!({"data": {"v": "2"}}))).await?;
    eventually("a ConfigMap change meanwhile", Duration::from_secs(30), || async {
        Ok((cm_value(&down_cm, "cfg").await?.as_deref() == Some("2")).then_some(()))
    })
    .await?;
    install_crd(&env.downstream, crd).await?;
    eventually("the Widget downstream again", Duration::from_secs(90), || async {
        Ok((size_of(&down_w, "w1").await?.as_deref() == Some("small")).then_some(()))
    })
    .await?;
    assert!(d.terminate()?.success(), "SIGTERM exits 0");
    Ok(())
}

#[tokio::test]
async fn a_synced_crd_is_established_downstream_before_the_objects_of_its_kind() -> anyhow::Result<()> {
    let env = TestEnv::new("run-kinds-crd-first").await?;
    let ns = env.namespace.clone();
    let group = format!("{ns}.first.example.com");
    // Only this test's CRD is synced: the clusters are shared.
    let crd = mk_crd(&group, "Gadget", json!({"downsync-test": ns}))?;
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let outcome = crd_first(&env, &group, &crd).await;
    for client in [&env.upstream, &env.downstream] {
        delete_crd(client, &crd_name).await?;
    }
    outcome?;
    env.cleanup().await
}

async fn crd_first(env: &TestEnv, group: &str, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let ns = env.namespace.as_str();
    install_crd(&env.upstream, crd).await?;
    let ar = resource(group, "Gadget");
    let (up_g, down_g): (Api<DynamicObject>, Api<DynamicObject>) =
        (Api::namespaced_with(env.upstream.clone(), ns, &ar), Api::namespaced_with(env.downstream.clone(), ns, &ar));
    for i in 0..5 {
        up_g.create(&PostParams::default(), &mk_object(group, "Gadget", &format!("g{i}"), "big")?).await?;
    }
    let selector = format!("downsync-test={ns}");
    let config = config(
        env,
        &[
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition", Some(&selector)),
            (&format!("{group}/v1"), "Gadget", None),
        ],
    )?;
    let mut d = Daemon::start("kinds-crd-first", &args(env, &config))?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let crds: Api<CustomResourceDefinition> = Api::all(env.downstream.clone());
    let copy = eventually("the CRD downstream, established", Duration::from_secs(60), || async {
        Ok(crds.get_opt(&crd_name).await?.filter(established))
    })
    .await?;
    let labels = copy.metadata.labels.unwrap_or_default();
    assert!(labels.keys().any(|k| k.contains("downsync")), "the copy carries downsync's stamp: {labels:?}");
    for i in 0..5 {
        let name = format!("g{i}");
        eventually("every Gadget downstream", Duration::from_secs(90), || async {
            Ok((size_of(&down_g, &name).await?.as_deref() == Some("big")).then_some(()))
        })
        .await?;
    }
    // No Gadget was written before its kind was served downstream: not one failed sync.
    let failed = d.metric("downsync_syncs_total", &[r#"kind="Gadget""#, r#"result="error""#])?;
    assert_eq!(failed, 0.0, "a Gadget write failed:\n{}", d.log_text());
    let created = d.metric("downsync_syncs_total", &[r#"kind="Gadget""#, r#"operation="created""#])?;
    assert_eq!(created, 5.0);
    assert!(d.terminate()?.success(), "SIGTERM exits 0");
    Ok(())
}
