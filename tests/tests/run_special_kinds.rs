//! `downsync run`, the binary, with the kinds whose downstream copy the downstream cluster
//! itself writes to: a PersistentVolume and its claim bound by the real volume binder, a
//! ConfigMap's `binaryData` byte for byte, a LoadBalancer Service's allocations and status, and
//! deletion propagation (`Foreground`, `Orphan`) against the real garbage collector.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use downsync_tests::daemon::{Daemon, builtin_plugins_dir};
use downsync_tests::{DOWNSTREAM_CONTROLLERS, TestEnv, eventually};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// `run` for the test's namespace (also its target) with the built-in plugins, syncing `kinds`.
fn args(ns: &str, kinds: &[&str], extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let plugins = builtin_plugins_dir(ns)?;
    let mut a: Vec<String> = kinds.iter().flat_map(|k| ["--resource", k]).map(String::from).collect();
    a.extend(["--namespace", ns, "--target", ns].map(String::from));
    a.extend(["--plugins-dir".to_string(), plugins.display().to_string()]);
    a.extend(extra.iter().map(|s| (*s).to_string()));
    Ok(a)
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

async fn merge<K>(api: &Api<K>, name: &str, patch: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?)
}

/// What a user would look at to see whether a claim and its volume are bound, downstream.
async fn binding_state(down: &Client, ns: &str, pvc: &str, pv: &str) -> String {
    let claim = Api::<PersistentVolumeClaim>::namespaced(down.clone(), ns).get_opt(pvc).await;
    let volume = Api::<PersistentVolume>::all(down.clone()).get_opt(pv).await;
    let claim = match claim {
        Ok(Some(c)) => format!(
            "PVC {pvc}: phase {:?}, volumeName {:?}",
            c.status.and_then(|s| s.phase),
            c.spec.and_then(|s| s.volume_name)
        ),
        Ok(None) => format!("PVC {pvc}: not synced"),
        Err(e) => format!("PVC {pvc}: {e}"),
    };
    let volume = match volume {
        Ok(Some(v)) => format!(
            "PV {pv}: phase {:?}, claimRef {:?}",
            v.status.and_then(|s| s.phase),
            v.spec.and_then(|s| s.claim_ref).map(|c| (c.name, c.uid))
        ),
        Ok(None) => format!("PV {pv}: not synced"),
        Err(e) => format!("PV {pv}: {e}"),
    };
    format!("{claim}; {volume}")
}

#[tokio::test]
async fn a_volume_bound_by_the_downstream_binder_stays_bound_through_upstream_updates() -> anyhow::Result<()> {
    let env = TestEnv::new("run-pv-binding").await?;
    let pv_name = format!("{}-pv", env.namespace);
    let outcome = volume_binding(&env, &pv_name).await;
    // Pass or fail: the upstream runs no protection controllers, so the finalizers its admission
    // put on the claim and the volume are released here, or neither the volume nor the test
    // namespace would ever go. The volume is cluster-scoped: deleted on both sides.
    let released = release_volume(&env, &pv_name).await;
    outcome?;
    released?;
    env.cleanup().await
}

async fn release_volume(env: &TestEnv, pv_name: &str) -> anyhow::Result<()> {
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    let up_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.upstream.clone(), &env.namespace);
    let up_pvs: Api<PersistentVolume> = Api::all(env.upstream.clone());
    if up_pvcs.get_opt("data").await?.is_some() {
        up_pvcs.patch("data", &PatchParams::default(), &release).await?;
    }
    for pvs in [up_pvs.clone(), Api::all(env.downstream.clone())] {
        if pvs.get_opt(pv_name).await?.is_some() {
            pvs.delete(pv_name, &DeleteParams::background()).await?;
        }
    }
    if up_pvs.get_opt(pv_name).await?.is_some() {
        up_pvs.patch(pv_name, &PatchParams::default(), &release).await?;
    }
    Ok(())
}

/// The volume test itself, on `env`'s clusters; leaves the clean-up to the caller.
async fn volume_binding(env: &TestEnv, pv_name: &str) -> anyhow::Result<()> {
    let ns = env.namespace.clone();
    // PersistentVolumes are cluster-scoped, which --namespace does not filter: a label unique to
    // this test selects its two objects, and the claim selects only this test's volume.
    let (pv_name, label) = (pv_name.to_string(), json!({"downsync.dev/test-volume": ns}));
    let up_pvs: Api<PersistentVolume> = Api::all(env.upstream.clone());
    let up_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.upstream.clone(), &ns);
    create(
        &up_pvs,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": label},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "manual",
                "hostPath": {"path": format!("/tmp/{pv_name}")}}}),
    )
    .await?;
    // No volumeName: the binder has to find the volume, and write the binding into both objects.
    create(
        &up_pvcs,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": ns, "labels": label},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                "selector": {"matchLabels": label},
                "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await?;

    let selector = format!("downsync.dev/test-volume={ns}");
    let a = args(&ns, &["v1/PersistentVolume", "v1/PersistentVolumeClaim"], &["--selector", &selector])?;
    let mut d = Daemon::start("pv-binding", &a)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    let down_pvs: Api<PersistentVolume> = Api::all(env.downstream.clone());
    let down_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.downstream.clone(), &ns);
    let bound = eventually("the downstream binder to bind the synced claim", Duration::from_secs(60), || async {
        let pvc = down_pvcs.get_opt("data").await?;
        let phase = pvc.as_ref().and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref());
        Ok((phase == Some("Bound")).then_some(pvc).flatten())
    })
    .await;
    let state = binding_state(&env.downstream, &ns, "data", &pv_name).await;
    let bound = bound.with_context(|| {
        format!(
            "the claim never bound downstream ({state}). This test needs the downstream control plane's \
             kube-controller-manager to run the volume binder: start it with \
             `tests/cluster/controlplane.sh up NAME --controllers {DOWNSTREAM_CONTROLLERS}`"
        )
    })?;
    let claim_uid = bound.metadata.uid.clone().context("a claim without uid")?;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv_name.as_str()), "{state}");
    let pv = down_pvs.get(&pv_name).await?;
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()).context("bound PV without claimRef")?;
    assert_eq!(claim_ref.uid.as_deref(), Some(claim_uid.as_str()), "the PV is bound to the synced claim: {state}");

    // Upstream changes both objects: a label on the claim, the volume's reclaim policy.
    merge(&up_pvcs, "data", json!({"metadata": {"labels": {"tier": "gold"}}})).await?;
    merge(&up_pvs, &pv_name, json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})).await?;
    let (pvc, pv) = eventually("both upstream changes downstream", Duration::from_secs(30), || async {
        let pvc = down_pvcs.get("data").await?;
        let pv = down_pvs.get(&pv_name).await?;
        let labelled = pvc.metadata.labels.as_ref().and_then(|l| l.get("tier")).map(String::as_str) == Some("gold");
        let policy = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
        Ok((labelled && policy == Some("Retain")).then_some((pvc, pv)))
    })
    .await?;
    let state = binding_state(&env.downstream, &ns, "data", &pv_name).await;
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"), "{state}");
    assert_eq!(pvc.metadata.uid.as_deref(), Some(claim_uid.as_str()), "the claim was not recreated: {state}");
    assert_eq!(pvc.spec.and_then(|s| s.volume_name), Some(pv_name.clone()), "{state}");
    let claim_ref = pv.spec.and_then(|s| s.claim_ref).context("the update dropped the PV's claimRef")?;
    assert_eq!(claim_ref.uid.as_deref(), Some(claim_uid.as_str()), "{state}");
    assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"), "{state}");
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", d.log.display());
    assert!(d.terminate()?.success());
    Ok(())
}

#[tokio::test]
async fn binary_data_round_trips_byte_for_byte() -> anyhow::Result<()> {
    let env = TestEnv::new("run-binary-data").await?;
    let ns = env.namespace.clone();
    let every_byte: Vec<u8> = (0..=255).collect();
    // Not UTF-8: a lone continuation byte, an overlong '/', an encoded surrogate, a truncated
    // sequence, and bytes that never occur in UTF-8.
    let not_utf8: Vec<u8> = vec![0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xe2, 0x28, 0xa1, 0xf0, 0x9f, 0xff, 0xfe, 0x00];
    assert!(std::str::from_utf8(&not_utf8).is_err());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("blobs".into());
    cm.binary_data = Some(
        [("every-byte".to_string(), ByteString(every_byte.clone())), ("not-utf8".into(), ByteString(not_utf8.clone()))]
            .into(),
    );
    let up: Api<ConfigMap> = Api::namespaced(env.upstream.clone(), &ns);
    up.create(&PostParams::default(), &cm).await?;

    let mut d = Daemon::start("binary-data", &args(&ns, &["v1/ConfigMap"], &[])?)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let copy = down.get("blobs").await?.binary_data.unwrap_or_default();
    assert_eq!(copy.get("every-byte").map(|b| &b.0), Some(&every_byte));
    assert_eq!(copy.get("not-utf8").map(|b| &b.0), Some(&not_utf8));
    assert_eq!(copy.len(), 2);

    // An update travels byte-exact too: every byte reversed.
    let reversed: Vec<u8> = every_byte.iter().rev().copied().collect();
    let mut current = up.get("blobs").await?;
    current.binary_data.get_or_insert_default().insert("every-byte".into(), ByteString(reversed.clone()));
    up.replace("blobs", &PostParams::default(), &current).await?;
    let copy = eventually("the reversed bytes downstream", Duration::from_secs(30), || async {
        let data = down.get("blobs").await?.binary_data.unwrap_or_default();
        Ok((data.get("every-byte").map(|b| &b.0) == Some(&reversed)).then_some(data))
    })
    .await?;
    assert_eq!(copy.get("not-utf8").map(|b| &b.0), Some(&not_utf8));
    assert!(d.terminate()?.success());
    env.cleanup().await
}

/// The fields the downstream apiserver and "cloud" wrote to a LoadBalancer Service.
fn allocations(svc: &Service) -> (Option<String>, Vec<Option<i32>>, Option<i32>, serde_json::Value) {
    let spec = svc.spec.clone().unwrap_or_default();
    let node_ports = spec.ports.unwrap_or_default().iter().map(|p| p.node_port).collect();
    let ingress = json!(svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()));
    (spec.cluster_ip, node_ports, spec.health_check_node_port, ingress)
}

#[tokio::test]
async fn a_load_balancer_keeps_its_downstream_allocations_and_status_through_upstream_updates() -> anyhow::Result<()> {
    let env = TestEnv::new("run-load-balancer").await?;
    let ns = env.namespace.clone();
    let up: Api<Service> = Api::namespaced(env.upstream.clone(), &ns);
    create(
        &up,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    let mut d = Daemon::start("load-balancer", &args(&ns, &["v1/Service"], &[])?)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    // A cloud controller's part: publish the balancer's address through the status subresource.
    let down: Api<Service> = Api::namespaced(env.downstream.clone(), &ns);
    let ingress = json!([{"ip": "203.0.113.10", "ipMode": "VIP"}, {"hostname": "web.lb.example.com"}]);
    down.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
    )
    .await?;
    let before = down.get("web").await?;
    let kept = allocations(&before);
    assert!(kept.0.as_deref().is_some_and(|ip| !ip.is_empty() && ip != "None"), "clusterIP allocated: {kept:?}");
    assert!(kept.1.iter().all(Option::is_some), "nodePorts allocated: {kept:?}");
    assert!(kept.2.is_some(), "healthCheckNodePort allocated for externalTrafficPolicy Local: {kept:?}");
    assert_eq!(kept.3, ingress, "the status as written");

    // Upstream allocated its own (it is a cluster too); they must not travel.
    let upstream_allocations = allocations(&up.get("web").await?);
    merge(&up, "web", json!({"metadata": {"labels": {"tier": "frontend"}}, "spec": {"sessionAffinity": "ClientIP"}}))
        .await?;
    let after = eventually("the upstream change downstream", Duration::from_secs(30), || async {
        let svc = down.get("web").await?;
        let affinity = svc.spec.as_ref().and_then(|s| s.session_affinity.as_deref());
        Ok((affinity == Some("ClientIP")).then_some(svc))
    })
    .await?;
    let tier = after.metadata.labels.as_ref().and_then(|l| l.get("tier"));
    assert_eq!(tier.map(String::as_str), Some("frontend"));
    assert_eq!(
        allocations(&after),
        kept,
        "downstream clusterIP, nodePorts, healthCheckNodePort and status kept (upstream had {upstream_allocations:?})"
    );
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", d.log.display());
    assert!(d.terminate()?.success());
    env.cleanup().await
}

/// A config file for `downsync run --config` that sets only the deletion propagation.
fn propagation_config(ns: &str, propagation: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("downsync-{ns}-{}.yaml", std::process::id()));
    std::fs::write(&path, format!("sync:\n  propagation: {propagation}\n"))?;
    Ok(path)
}

/// Syncs ConfigMap `owner` down with `propagation`, then makes a downstream ConfigMap
/// `dependent` owned by the copy, as a downstream controller would (`finalizers` on it, if any).
async fn owner_with_dependent(
    env: &TestEnv,
    propagation: &str,
    finalizers: &[&str],
) -> anyhow::Result<(Daemon, ConfigMap)> {
    let ns = &env.namespace;
    let up: Api<ConfigMap> = Api::namespaced(env.upstream.clone(), ns);
    create(&up, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {"k": "v"}}))
        .await?;
    let config = propagation_config(ns, propagation)?;
    let config_arg = config.display().to_string();
    let mut d = Daemon::start(
        &format!("propagation-{propagation}"),
        &args(ns, &["v1/ConfigMap"], &["--config", &config_arg])?,
    )?;
    let ready = d.wait_ready(Duration::from_secs(60)).await;
    // downsync read the file at start; it is not needed any more, pass or fail.
    std::fs::remove_file(&config)?;
    ready?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), ns);
    let owner = down.get("owner").await?;
    let dependent = create(
        &down,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dependent", "finalizers": finalizers,
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                    "uid": owner.metadata.uid, "blockOwnerDeletion": true}]}}),
    )
    .await?;
    Ok((d, dependent))
}

#[tokio::test]
async fn foreground_propagation_deletes_the_downstream_dependent_before_the_owner() -> anyhow::Result<()> {
    let env = TestEnv::new("run-foreground").await?;
    let ns = env.namespace.clone();
    // The test's finalizer holds the dependent once the garbage collector deleted it, so that
    // the owner's wait is seen, not raced.
    let hold = "downsync.dev/test-hold";
    let (d, _) = owner_with_dependent(&env, "Foreground", &[hold]).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);

    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("owner", &DeleteParams::default()).await?;
    let waiting = eventually(
        "the owner waiting (foregroundDeletion) while the garbage collector deletes the dependent",
        Duration::from_secs(30),
        || async {
            let (Some(owner), Some(dependent)) = (down.get_opt("owner").await?, down.get_opt("dependent").await?)
            else {
                return Ok(None);
            };
            let deleting = dependent.metadata.deletion_timestamp.is_some();
            Ok((deleting && owner.metadata.deletion_timestamp.is_some()).then_some(owner))
        },
    )
    .await
    .with_context(|| format!("log: {}", d.log.display()));
    // Pass or fail, the dependent is let go: held for ever, it would keep the test namespace.
    merge(&down, "dependent", json!({"metadata": {"finalizers": null}})).await?;
    let owner = waiting?;
    assert!(
        owner.metadata.finalizers.iter().flatten().any(|f| f == "foregroundDeletion"),
        "the owner is held by the foregroundDeletion finalizer: {:?}",
        owner.metadata.finalizers
    );

    // The dependent was let go above: now it goes, and then the owner.
    eventually("the dependent, then the owner, to go", Duration::from_secs(30), || async {
        Ok((down.get_opt("dependent").await?.is_none() && down.get_opt("owner").await?.is_none()).then_some(()))
    })
    .await?;
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn orphan_propagation_leaves_the_downstream_dependent_without_its_owner_reference() -> anyhow::Result<()> {
    let env = TestEnv::new("run-orphan").await?;
    let ns = env.namespace.clone();
    let (d, dependent) = owner_with_dependent(&env, "Orphan", &[]).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);

    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("owner", &DeleteParams::default()).await?;
    eventually("the owner to go downstream", Duration::from_secs(30), || async {
        Ok(down.get_opt("owner").await?.is_none().then_some(()))
    })
    .await
    .with_context(|| format!("log: {}", d.log.display()))?;
    // With Orphan the collector removes the reference before the owner goes; with Background it
    // would still be there, the dependent about to be collected.
    let left = down.get_opt("dependent").await?.context("the dependent was deleted with its owner")?;
    assert_eq!(left.metadata.uid, dependent.metadata.uid);
    assert!(left.metadata.deletion_timestamp.is_none(), "the dependent is not being deleted");
    assert!(
        left.metadata.owner_references.as_ref().is_none_or(Vec::is_empty),
        "the owner reference is removed: {:?}",
        left.metadata.owner_references
    );
    assert!(d.terminate()?.success());
    env.cleanup().await
}
