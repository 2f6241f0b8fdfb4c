//! `downsync run`, the binary, between two real control planes: 1,000 mixed objects converge,
//! updates and deletes follow, downstream drift is reverted while downstream-only additions
//! stay, an unowned object of the same name is never touched, and namespaces are mapped.

use std::time::Duration;

use downsync_tests::daemon::{Daemon, builtin_plugins_dir};
use downsync_tests::objects::{self, converged, create_all, mk_configmap, mk_mix, owned, resource_args};
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// `run` for the test's namespace, owned as target `target`, with the built-in plugins.
fn args(ns: &str, target: &str) -> anyhow::Result<Vec<String>> {
    let plugins = builtin_plugins_dir(target)?;
    let mut a: Vec<String> = resource_args().into_iter().map(String::from).collect();
    a.extend(["--namespace", ns, "--target", target, "--workers", "16"].map(String::from));
    a.extend(["--plugins-dir".to_string(), plugins.display().to_string()]);
    Ok(a)
}

async fn patch_cm(client: &Client, ns: &str, name: &str, patch: serde_json::Value) -> anyhow::Result<ConfigMap> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

#[tokio::test]
async fn a_thousand_mixed_objects_converge_then_follow_updates_and_deletes() -> anyhow::Result<()> {
    let env = TestEnv::new("run-converge").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, mk_mix(&ns, 1000)).await?;

    let mut d = Daemon::start("converge", &args(&ns, &ns)?)?;
    d.wait_ready(Duration::from_secs(180)).await?;
    // Ready means the initial sync is done: every object is there already, not eventually.
    assert!(
        converged(&env.upstream, &env.downstream, &ns, &ns).await?,
        "not converged at ready; log: {}",
        d.log.display()
    );
    let created = d.metric("downsync_syncs_total", &[r#"operation="created""#, r#"result="ok""#])?;
    assert_eq!(created, 1000.0, "each object created exactly once");

    // Updates: 50 ConfigMaps change their data upstream.
    for i in (2..250).step_by(5) {
        patch_cm(&env.upstream, &ns, &format!("obj-{i:05}"), json!({"data": {"index": "changed"}})).await?;
    }
    eventually("upstream updates to propagate", Duration::from_secs(60), || async {
        Ok(converged(&env.upstream, &env.downstream, &ns, &ns).await?.then_some(()))
    })
    .await?;

    // Deletes: 40 objects of each kind go upstream; their copies go downstream.
    for i in 0..120 {
        let (kind, name) = objects::kind_name(&mk_mix(&ns, 120)[i]);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(env.upstream.clone(), &ns, &objects::api_resource(&kind));
        api.delete(&name, &DeleteParams::default()).await?;
    }
    eventually("upstream deletes to propagate", Duration::from_secs(60), || async {
        Ok(converged(&env.upstream, &env.downstream, &ns, &ns).await?.then_some(()))
    })
    .await?;
    assert_eq!(owned(&env.downstream, &ns, &ns).await?.len(), 880);
    assert_eq!(
        d.metric("downsync_syncs_total", &[r#"result="error""#])?,
        0.0,
        "no failed syncs; log: {}",
        d.log.display()
    );
    assert!(d.terminate()?.success(), "SIGTERM ends downsync with exit code 0");
    env.cleanup().await
}

#[tokio::test]
async fn downstream_drift_is_reverted_and_downstream_additions_stay() -> anyhow::Result<()> {
    let env = TestEnv::new("run-drift").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "settings", json!({"mode": "fast"}))]).await?;
    let mut d = Daemon::start("drift", &args(&ns, &ns)?)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    // Someone edits a synced field downstream, and adds a label and annotation of their own.
    patch_cm(
        &env.downstream,
        &ns,
        "settings",
        json!({"metadata": {"labels": {"team": "ops"}, "annotations": {"ops.example/ticket": "42"}},
               "data": {"mode": "slow"}}),
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let reverted = eventually("the downstream edit to be reverted", Duration::from_secs(30), || async {
        let cm = cms.get("settings").await?;
        let mode = cm.data.as_ref().and_then(|d| d.get("mode")).cloned();
        Ok((mode.as_deref() == Some("fast")).then_some(cm))
    })
    .await?;
    let labels = reverted.metadata.labels.unwrap_or_default();
    let annotations = reverted.metadata.annotations.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("ops"), "a downstream-only label stays");
    assert_eq!(annotations.get("ops.example/ticket").map(String::as_str), Some("42"));

    // A later upstream change still keeps them.
    patch_cm(&env.upstream, &ns, "settings", json!({"data": {"mode": "faster"}})).await?;
    let updated = eventually("the upstream change", Duration::from_secs(30), || async {
        let cm = cms.get("settings").await?;
        Ok((cm.data.as_ref().and_then(|d| d.get("mode")).map(String::as_str) == Some("faster")).then_some(cm))
    })
    .await?;
    assert_eq!(updated.metadata.labels.unwrap_or_default().get("team").map(String::as_str), Some("ops"));
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn an_unowned_object_with_the_same_name_is_never_touched_and_the_conflict_is_reported() -> anyhow::Result<()> {
    let env = TestEnv::new("run-isolation").await?;
    let ns = env.namespace.clone();
    let theirs = Api::<ConfigMap>::namespaced(env.downstream.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(mk_configmap(&ns, "taken", json!({"owner": "them"})))?)
        .await?;
    create_all(
        &env.upstream,
        &ns,
        vec![mk_configmap(&ns, "taken", json!({"owner": "us"})), mk_configmap(&ns, "free", json!({"owner": "us"}))],
    )
    .await?;
    let mut d = Daemon::start("isolation", &args(&ns, &ns)?)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    let events: Api<Event> = Api::namespaced(env.upstream.clone(), &ns);
    let note = eventually("a NameConflict event on the upstream object", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("NameConflict") && e.involved_object.name.as_deref() == Some("taken")
        }))
    })
    .await?;
    assert!(note.message.unwrap_or_default().contains("not owned"), "the event says why");
    assert!(d.metric("downsync_syncs_total", &[r#"kind="ConfigMap""#, r#"result="error""#])? >= 1.0);

    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let after = cms.get("taken").await?;
    assert_eq!(after.metadata.resource_version, theirs.metadata.resource_version, "never written");
    assert!(cms.get_opt("free").await?.is_some(), "the rest still syncs");

    // Deleting the upstream object does not delete theirs either.
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("taken", &DeleteParams::default()).await?;
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("free", &DeleteParams::default()).await?;
    eventually("the owned copy to go", Duration::from_secs(30), || async {
        Ok(cms.get_opt("free").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(cms.get("taken").await?.metadata.resource_version, theirs.metadata.resource_version);
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn a_namespace_prefix_maps_objects_into_created_namespaces() -> anyhow::Result<()> {
    let env = TestEnv::new("run-prefix").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "cfg", json!({"k": "v"}))]).await?;
    let mut a = args(&ns, &ns)?;
    a.extend(["--namespace-prefix".to_string(), "p-".to_string()]);
    let mut d = Daemon::start("prefix", &a)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let mapped = format!("p-{ns}");
    let namespace = Api::<Namespace>::all(env.downstream.clone()).get(&mapped).await?;
    let locator = namespace.metadata.annotations.unwrap_or_default();
    assert!(locator.get("downsync.dev/namespace-locator").is_some_and(|l| l.contains(&ns)), "{locator:?}");
    let cm = Api::<ConfigMap>::namespaced(env.downstream.clone(), &mapped).get("cfg").await?;
    assert_eq!(cm.data.unwrap_or_default().get("k").map(String::as_str), Some("v"));
    assert_eq!(
        cm.metadata.annotations.unwrap_or_default().get("downsync.dev/upstream-namespace").map(String::as_str),
        Some(ns.as_str())
    );
    // Deleting upstream removes the mapped copy.
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("cfg", &DeleteParams::default()).await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &mapped);
    eventually("the mapped copy to go", Duration::from_secs(30), || async {
        Ok(cms.get_opt("cfg").await?.is_none().then_some(()))
    })
    .await?;
    assert!(d.terminate()?.success());
    Api::<Namespace>::all(env.downstream.clone()).delete(&mapped, &DeleteParams::default()).await?;
    env.cleanup().await
}
