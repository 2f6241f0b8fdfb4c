//! The sync core against a real downstream apiserver: create, update, conflicts, strategies,
//! preservation, delete, immutable fields, and a 1,000-object pass that must write nothing
//! the second time.

use std::collections::BTreeMap;
use std::time::Duration;

use downsync::kube::KubeDownstream;
use downsync::sync::error::SyncError;
use downsync::sync::ownership::{OWNER_ANNOTATION, owner_value};
use downsync::sync::preservation::{self, MAX_DATA_BYTES};
use downsync::sync::{
    DownstreamConfig, DownstreamKey, ImmutablePolicy, NoRules, Operation, StateCache, Syncer, UpdateStrategy,
};
use downsync_tests::{TestEnv, eventually};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ApiResource, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

type TestSyncer = Syncer<KubeDownstream, NoRules>;

fn mk_syncer(client: &Client, config: DownstreamConfig) -> TestSyncer {
    Syncer::new(KubeDownstream::new(client.clone()), NoRules, config, StateCache::new())
}

fn mk_configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "demo"}},
        "data": data,
    })
}

async fn get_json(client: &Client, ns: &str, name: &str) -> Value {
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    serde_json::to_value(cm.get(name).await.expect("object exists")).expect("json")
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string()
}

fn ok(r: &downsync::sync::SyncResult) {
    assert!(r.error.is_none(), "sync failed: {:?}", r.error);
}

async fn merge_patch(client: &Client, ns: &str, name: &str, patch: Value) -> Value {
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    serde_json::to_value(cm.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch"))
        .expect("json")
}

#[tokio::test]
async fn create_then_resync_without_changes_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("core-create").await?;
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let desired = mk_configmap(&env.namespace, "simple", json!({"a": "1"}));

    let r = syncer.apply(desired.clone(), None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Created);
    let live = get_json(&env.downstream, &env.namespace, "simple").await;
    assert_eq!(live["data"], json!({"a": "1"}));
    assert_eq!(live["metadata"]["annotations"][OWNER_ANNOTATION], owner_value(&syncer.config().ownership));

    let r = syncer.apply(desired.clone(), None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Unchanged);
    assert_eq!(rv(&get_json(&env.downstream, &env.namespace, "simple").await), rv(&live), "no write happened");

    // With the live object from a watch cache and a matching state entry: no API call at all.
    let r = syncer.apply(desired, Some(Some(live.clone()))).await;
    assert_eq!((r.operation, r.attempts), (Operation::Unchanged, 0));
    env.cleanup().await
}

#[tokio::test]
async fn an_object_created_with_status_lands_without_upstream_metadata() -> anyhow::Result<()> {
    let env = TestEnv::new("core-status").await?;
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let mut desired = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": env.namespace, "uid": "upstream-uid", "resourceVersion": "12345",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "upstream-owner"}]},
        "spec": {"ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
    });
    let r = syncer.apply(desired.clone(), None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Created);
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(env.downstream.clone(), &env.namespace);
    let live = svc.get("web").await?;
    assert_ne!(live.metadata.uid.as_deref(), Some("upstream-uid"));
    assert!(live.metadata.owner_references.is_none(), "upstream ownerReferences would let the GC delete it");
    assert!(live.spec.and_then(|s| s.cluster_ip).is_some(), "the downstream allocated a clusterIP");

    // The upstream status moves: nothing to write downstream.
    desired["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}});
    desired["metadata"]["resourceVersion"] = json!("12399");
    let r = syncer.apply(desired, None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Unchanged);
    env.cleanup().await
}

#[tokio::test]
async fn creation_racing_another_writer() -> anyhow::Result<()> {
    let env = TestEnv::new("core-race").await?;
    let ns = env.namespace.clone();
    // Another replica of downsync (same identity) wins the create; our cache still says absent.
    let other = mk_syncer(&env.downstream, DownstreamConfig::default());
    ok(&other.apply(mk_configmap(&ns, "raced", json!({"a": "1"})), None).await);
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let r = syncer.apply(mk_configmap(&ns, "raced", json!({"a": "2"})), Some(None)).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Updated, "AlreadyExists leads to a re-read and an update");
    assert_eq!(get_json(&env.downstream, &ns, "raced").await["data"]["a"], "2");

    // A stranger wins the create: its object is left alone and the clash reported.
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    cms.create(&PostParams::default(), &serde_json::from_value(mk_configmap(&ns, "theirs", json!({"mine": "no"})))?)
        .await?;
    let r = syncer.apply(mk_configmap(&ns, "theirs", json!({"a": "1"})), Some(None)).await;
    assert!(matches!(r.error, Some(SyncError::NotOwned { .. })), "{:?}", r.error);
    assert_eq!(get_json(&env.downstream, &ns, "theirs").await["data"], json!({"mine": "no"}));
    env.cleanup().await
}

#[tokio::test]
async fn downstream_additions_survive_updates_under_every_strategy() -> anyhow::Result<()> {
    let env = TestEnv::new("core-strategies").await?;
    let ns = env.namespace.clone();
    let strategies = [
        ("replace", UpdateStrategy::Replace),
        ("merge", UpdateStrategy::Merge),
        ("strategic", UpdateStrategy::StrategicMerge),
        ("ssa", UpdateStrategy::ServerSideApply { field_manager: "downsync".into(), force: true }),
    ];
    for (name, strategy) in strategies {
        let syncer = mk_syncer(&env.downstream, DownstreamConfig { strategy, ..DownstreamConfig::default() });
        let mut desired = mk_configmap(&ns, name, json!({"keep": "1", "drop": "2"}));
        desired["metadata"]["labels"]["upstream-label"] = json!("x");
        ok(&syncer.apply(desired.clone(), None).await);

        // Downstream adds a label, an annotation and a finalizer of its own.
        merge_patch(
            &env.downstream,
            &ns,
            name,
            json!({"metadata": {"labels": {"local": "yes"}, "annotations": {"local/note": "hi"}, "finalizers": ["example.com/hold"]}}),
        )
        .await;

        // Upstream changes a value, removes a data key and a label.
        desired["data"] = json!({"keep": "changed"});
        desired["metadata"]["labels"].as_object_mut().expect("labels").remove("upstream-label");
        let r = syncer.apply(desired.clone(), None).await;
        ok(&r);
        assert_eq!(r.operation, Operation::Updated, "{name}");

        let live = get_json(&env.downstream, &ns, name).await;
        assert_eq!(live["data"], json!({"keep": "changed"}), "{name}: data follows upstream, removed key gone");
        assert_eq!(live["metadata"]["labels"]["local"], "yes", "{name}: downstream label kept");
        assert!(live["metadata"]["labels"].get("upstream-label").is_none(), "{name}: removed upstream label gone");
        assert_eq!(live["metadata"]["annotations"]["local/note"], "hi", "{name}: downstream annotation kept");
        assert_eq!(live["metadata"]["finalizers"], json!(["example.com/hold"]), "{name}: downstream finalizer kept");

        let again = syncer.apply(desired, None).await;
        assert_eq!(again.operation, Operation::Unchanged, "{name}: converged");
        merge_patch(&env.downstream, &ns, name, json!({"metadata": {"finalizers": null}})).await;
    }
    env.cleanup().await
}

#[tokio::test]
async fn a_conflict_storm_converges_and_keeps_the_writers_fields() -> anyhow::Result<()> {
    let env = TestEnv::new("core-conflicts").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig { conflict_retries: 50, ..DownstreamConfig::default() });
    ok(&syncer.apply(mk_configmap(&ns, "contended", json!({"v": "0"})), None).await);
    let stale = get_json(&env.downstream, &ns, "contended").await;

    // A downstream writer keeps bumping the object for a while.
    let writer_client = env.downstream.clone();
    let writer_ns = ns.clone();
    let writer = tokio::spawn(async move {
        for i in 0..40 {
            merge_patch(
                &writer_client,
                &writer_ns,
                "contended",
                json!({"metadata": {"annotations": {"writer/count": i.to_string()}}}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut conflicts_seen = 0;
    for v in 1..=10 {
        // The stale cached copy guarantees at least one 409 on the first attempt.
        let r =
            syncer.apply(mk_configmap(&ns, "contended", json!({"v": v.to_string()})), Some(Some(stale.clone()))).await;
        ok(&r);
        assert_eq!(r.operation, Operation::Updated);
        assert!(r.attempts >= 2, "a stale resourceVersion must conflict first");
        conflicts_seen += r.conflicts.len();
    }
    writer.await?;
    assert!(conflicts_seen >= 10, "conflicts are reported with their paths");
    let live = get_json(&env.downstream, &ns, "contended").await;
    assert_eq!(live["data"]["v"], "10");
    assert_eq!(live["metadata"]["annotations"]["writer/count"], "39", "the writer's downstream-only field survives");
    env.cleanup().await
}

#[tokio::test]
async fn a_field_another_manager_holds_is_reported_by_name_and_the_rest_is_written() -> anyhow::Result<()> {
    let env = TestEnv::new("core-conflict-limit").await?;
    let ns = env.namespace.clone();
    // Server-side apply without force: another manager owns `data.v`; that conflict never resolves.
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let syncer = mk_syncer(
        &env.downstream,
        DownstreamConfig {
            strategy: UpdateStrategy::ServerSideApply { field_manager: "downsync".into(), force: false },
            conflict_retries: 2,
            ..DownstreamConfig::default()
        },
    );
    ok(&syncer.apply(mk_configmap(&ns, "owned-field", json!({"v": "0"})), None).await);
    let theirs =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned-field"}, "data": {"v": "theirs"}});
    cms.patch("owned-field", &PatchParams::apply("someone-else").force(), &Patch::Apply(&theirs)).await?;

    let r = syncer.apply(mk_configmap(&ns, "owned-field", json!({"v": "ours", "w": "new"})), None).await;
    match &r.error {
        Some(SyncError::FieldConflict { fields, .. }) => {
            assert!(fields.contains("/data/v") && fields.contains("\"someone-else\""), "fields: {fields}");
        }
        other => panic!("expected a field conflict, got {other:?}"),
    }
    assert_eq!(r.attempts, 2, "the refused apply, then the rest of the object");
    let live = get_json(&env.downstream, &ns, "owned-field").await;
    assert_eq!(live["data"]["v"], "theirs", "the other manager's field is not taken without force");
    assert_eq!(live["data"]["w"], "new", "one contested field does not block the others");
    env.cleanup().await
}

#[tokio::test]
async fn deletes_only_owned_objects_and_waits_on_finalizers() -> anyhow::Result<()> {
    let env = TestEnv::new("core-delete").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let key = |name: &str| -> anyhow::Result<DownstreamKey> {
        Ok(DownstreamKey {
            gvr: downsync::sync::Gvr { group: String::new(), version: "v1".into(), resource: "configmaps".into() },
            kind: "ConfigMap".into(),
            namespace: Some(ns.clone()),
            name: name.into(),
        })
    };

    // Simple.
    ok(&syncer.apply(mk_configmap(&ns, "plain", json!({})), None).await);
    let r = syncer.delete(&key("plain")?, None, None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Deleted);
    assert!(cms.get_opt("plain").await?.is_none());
    assert!(syncer.state().get(&key("plain")?).is_none(), "state entry removed once gone");

    // Held by a finalizer: deleting, then deleted once the finalizer goes.
    ok(&syncer.apply(mk_configmap(&ns, "held", json!({})), None).await);
    merge_patch(&env.downstream, &ns, "held", json!({"metadata": {"finalizers": ["example.com/hold"]}})).await;
    let r = syncer.delete(&key("held")?, None, None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Deleting);
    assert!(syncer.state().get(&key("held")?).is_some(), "still tracked while it exists");
    merge_patch(&env.downstream, &ns, "held", json!({"metadata": {"finalizers": null}})).await;
    let r = syncer.delete(&key("held")?, None, None).await;
    assert_eq!(r.operation, Operation::Deleted);
    assert!(syncer.state().get(&key("held")?).is_none());

    // Cascade: the real garbage collector removes a dependent of the object we delete.
    ok(&syncer.apply(mk_configmap(&ns, "parent", json!({})), None).await);
    let parent_uid = cms.get("parent").await?.metadata.uid.unwrap_or_default();
    let child = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent_uid}]}});
    cms.create(&PostParams::default(), &serde_json::from_value(child)?).await?;
    ok(&syncer.delete(&key("parent")?, None, None).await);
    eventually("the garbage collector to remove the child", Duration::from_secs(90), || async {
        Ok(cms.get_opt("child").await?.is_none().then_some(()))
    })
    .await?;

    // Unowned: untouched, reported.
    cms.create(&PostParams::default(), &serde_json::from_value(mk_configmap(&ns, "stranger", json!({})))?).await?;
    let r = syncer.delete(&key("stranger")?, None, None).await;
    assert!(matches!(r.error, Some(SyncError::NotOwned { .. })), "{:?}", r.error);
    assert!(cms.get_opt("stranger").await?.is_some());
    env.cleanup().await
}

/// Two kcp workspaces' objects that were to map to one downstream name (they cannot, their
/// namespaces are hashed per workspace; the stamp makes sure of it even so): the copy is
/// stamped for the first, and the second can neither overwrite nor delete it.
#[tokio::test]
async fn a_copy_stamped_for_one_kcp_workspace_is_never_written_or_deleted_for_another() -> anyhow::Result<()> {
    use downsync::sync::workspaces::UPSTREAM_CLUSTER_ANNOTATION;
    let env = TestEnv::new("core-workspaces").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    // The desired object as the placement makes it from workspace `cluster`.
    let from = |cluster: &str| {
        let mut cm = mk_configmap(&ns, "shared", json!({"from": cluster}));
        cm["metadata"]["annotations"] = json!({UPSTREAM_CLUSTER_ANNOTATION: cluster});
        cm
    };
    ok(&syncer.apply(from("2abc9xyz"), None).await);
    let copy = get_json(&env.downstream, &ns, "shared").await;
    assert_eq!(copy["metadata"]["annotations"][UPSTREAM_CLUSTER_ANNOTATION], "2abc9xyz");

    // Workspace 7other00's object of the same downstream name: refused, naming the owner's
    // workspace, and nothing written.
    let r = syncer.apply(from("7other00"), None).await;
    match &r.error {
        Some(SyncError::NotOwned { owner, .. }) => assert!(owner.ends_with("in workspace 2abc9xyz"), "{owner}"),
        other => panic!("expected NotOwned, got {other:?}"),
    }
    assert_eq!(rv(&get_json(&env.downstream, &ns, "shared").await), rv(&copy), "the other workspace wrote");
    let key = DownstreamKey {
        gvr: downsync::sync::Gvr { group: String::new(), version: "v1".into(), resource: "configmaps".into() },
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone()),
        name: "shared".into(),
    };
    // Its delete (its object gone) leaves the copy; nor may one workspace (no cluster) take it.
    for other in [Some("7other00"), None] {
        let r = syncer.delete(&key, other, None).await;
        assert!(matches!(r.error, Some(SyncError::NotOwned { .. })), "{other:?}: {:?}", r.error);
        assert_eq!(rv(&get_json(&env.downstream, &ns, "shared").await), rv(&copy));
    }
    // The owner's workspace deletes it.
    let r = syncer.delete(&key, Some("2abc9xyz"), None).await;
    ok(&r);
    assert!(cms.get_opt("shared").await?.is_none());
    env.cleanup().await
}

fn mk_secret(ns: &str, name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "immutable": true, "type": "Opaque", "stringData": {"password": value}})
}

#[tokio::test]
async fn an_immutable_secret_changed_upstream_follows_the_policy() -> anyhow::Result<()> {
    let env = TestEnv::new("core-immutable").await?;
    let ns = env.namespace.clone();
    let secrets: Api<Secret> = Api::namespaced(env.downstream.clone(), &ns);
    for (name, policy) in [("skipped", ImmutablePolicy::Skip), ("recreated", ImmutablePolicy::Recreate)] {
        let syncer =
            mk_syncer(&env.downstream, DownstreamConfig { on_immutable: policy, ..DownstreamConfig::default() });
        ok(&syncer.apply(mk_secret(&ns, name, "one"), None).await);
        let before = secrets.get(name).await?;
        let r = syncer.apply(mk_secret(&ns, name, "two"), None).await;
        let after = secrets.get(name).await?;
        let password = |s: &Secret| s.data.as_ref().and_then(|d| d.get("password")).map(|b| b.0.clone());
        match policy {
            ImmutablePolicy::Skip => {
                match &r.error {
                    Some(SyncError::Immutable { fields, .. }) => assert!(fields.iter().any(|f| f.starts_with("/data"))),
                    other => panic!("expected an immutable-field error, got {other:?}"),
                }
                assert_eq!(after.metadata.uid, before.metadata.uid);
                assert_eq!(password(&after), Some(b"one".to_vec()));
            }
            ImmutablePolicy::Recreate => {
                ok(&r);
                assert_eq!(r.operation, Operation::Recreated);
                assert_ne!(after.metadata.uid, before.metadata.uid, "a new object");
                assert_eq!(password(&after), Some(b"two".to_vec()));
            }
        }
    }
    env.cleanup().await
}

#[tokio::test]
async fn an_oversized_configmap_is_refused_before_any_api_call() -> anyhow::Result<()> {
    let env = TestEnv::new("core-size").await?;
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let big = "x".repeat(1_100_000);
    let r = syncer.apply(mk_configmap(&env.namespace, "huge", json!({"blob": big})), None).await;
    let err = r.error.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("huge") && err.contains("bytes"), "error names the object and size: {err}");
    assert_eq!(r.attempts, 0);
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &env.namespace);
    assert!(cms.get_opt("huge").await?.is_none());
    env.cleanup().await
}

/// Bytes with every byte value and no UTF-8 structure, so that any re-encoding would show.
fn mk_bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len).map(|i| ((i as u32).wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fn mk_meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..ObjectMeta::default() }
}

/// An Opaque Secret holding `data`, as JSON (k8s-openapi writes the base64).
fn mk_data_secret(ns: &str, name: &str, data: &[(&str, Vec<u8>)]) -> anyhow::Result<Value> {
    let secret = Secret {
        metadata: mk_meta(ns, name),
        type_: Some("Opaque".into()),
        data: Some(data.iter().map(|(k, v)| ((*k).to_string(), ByteString(v.clone()))).collect()),
        ..Secret::default()
    };
    Ok(serde_json::to_value(secret)?)
}

/// A ConfigMap with one `data` string and one `binaryData` value, as JSON.
fn mk_binary_configmap(ns: &str, name: &str, text: &str, binary: Vec<u8>) -> anyhow::Result<Value> {
    let cm = ConfigMap {
        metadata: mk_meta(ns, name),
        data: Some([("text".to_string(), text.to_string())].into()),
        binary_data: Some([("bin".to_string(), ByteString(binary))].into()),
        ..ConfigMap::default()
    };
    Ok(serde_json::to_value(cm)?)
}

/// Creates a v1 Secret or ConfigMap as it is, for the apiserver's own verdict on it.
async fn create_as_is(client: &Client, obj: &Value) -> Result<(), kube::Error> {
    let ar = match obj["kind"].as_str() {
        Some("Secret") => ApiResource::erase::<Secret>(&()),
        _ => ApiResource::erase::<ConfigMap>(&()),
    };
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &dynamic).await.map(drop)
}

/// 3,000 bytes of `data` text: 1,000 two-byte characters and 1,000 one-byte ones, so that a
/// count of characters instead of UTF-8 bytes would be off.
fn mk_text(extra: usize) -> String {
    format!("{}{}", "é".repeat(1000), "x".repeat(1000 + extra))
}

#[tokio::test]
async fn secrets_and_configmaps_up_to_the_data_limit_sync_byte_exact() -> anyhow::Result<()> {
    let env = TestEnv::new("core-size-limit").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let secrets: Api<Secret> = Api::namespaced(env.downstream.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);

    // The reported Secret (1,040,643 bytes, 1,387,722 of JSON), and one at the limit exactly:
    // the apiserver refuses only a total over it.
    let cases = [
        ("reported", vec![("blob", mk_bytes(1_040_643, 1))]),
        ("at-limit", vec![("head", mk_bytes(MAX_DATA_BYTES - 100, 2)), ("tail", mk_bytes(100, 3))]),
    ];
    for (name, data) in cases {
        let desired = mk_data_secret(&ns, name, &data)?;
        create_as_is(&env.upstream, &desired).await?;
        let r = syncer.apply(desired, None).await;
        ok(&r);
        assert_eq!(r.operation, Operation::Created, "{name}");
        let live = secrets.get(name).await?.data.unwrap_or_default();
        assert_eq!(live.len(), data.len(), "{name}");
        for (k, bytes) in &data {
            // assert! rather than assert_eq!: a failure must not print a megabyte.
            assert!(live.get(*k).is_some_and(|b| b.0 == *bytes), "{name}/{k}: downstream holds the desired bytes");
        }
    }

    // A ConfigMap: UTF-8 text plus binaryData, the limit in all.
    let text = mk_text(0);
    let binary = mk_bytes(MAX_DATA_BYTES - text.len(), 4);
    let desired = mk_binary_configmap(&ns, "at-limit", &text, binary.clone())?;
    create_as_is(&env.upstream, &desired).await?;
    let r = syncer.apply(desired.clone(), None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Created);
    let live = cms.get("at-limit").await?;
    assert!(live.data.unwrap_or_default().get("text") == Some(&text), "downstream holds the desired text");
    let live_binary = live.binary_data.unwrap_or_default();
    assert!(live_binary.get("bin").is_some_and(|b| b.0 == binary), "downstream holds the desired bytes");

    let r = syncer.apply(desired, None).await;
    ok(&r);
    assert_eq!(r.operation, Operation::Unchanged, "a big object converges like any other");
    env.cleanup().await
}

#[tokio::test]
async fn one_byte_over_the_data_limit_is_refused_by_name_and_nothing_is_written() -> anyhow::Result<()> {
    let env = TestEnv::new("core-size-over").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let secret =
        mk_data_secret(&ns, "over", &[("head", mk_bytes(MAX_DATA_BYTES - 100, 2)), ("tail", mk_bytes(101, 3))])?;
    let text = mk_text(1);
    let configmap = mk_binary_configmap(&ns, "over", &text, mk_bytes(MAX_DATA_BYTES - mk_text(0).len(), 4))?;

    for (kind, desired) in [("secret", secret), ("configmap", configmap)] {
        // The apiserver's own rule agrees: it refuses the same object as invalid.
        match create_as_is(&env.upstream, &desired).await {
            Err(kube::Error::Api(status)) if status.code == 422 => {}
            other => panic!("{kind}: the apiserver should refuse it with 422, got {other:?}"),
        }
        let r = syncer.apply(desired, None).await;
        match &r.error {
            // The variant the controller parks: retrying the same bytes cannot help.
            Some(SyncError::Preservation(preservation::Error::TooLarge { size, limit, .. })) => {
                assert_eq!((*size, *limit), (MAX_DATA_BYTES + 1, MAX_DATA_BYTES), "{kind}");
            }
            other => panic!("{kind}: expected a too-large refusal, got {other:?}"),
        }
        let msg = r.error.map(|e| e.to_string()).unwrap_or_default();
        let named = msg.contains(&format!("{kind} {ns}/over"));
        assert!(named && msg.contains("1048577 bytes") && msg.contains("1048576-byte limit"), "{msg}");
        assert_eq!(r.attempts, 0, "{kind}: refused before any write");
    }
    let secrets: Api<Secret> = Api::namespaced(env.downstream.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    assert!(secrets.get_opt("over").await?.is_none(), "no Secret written");
    assert!(cms.get_opt("over").await?.is_none(), "no ConfigMap written");
    env.cleanup().await
}

#[tokio::test]
async fn a_thousand_objects_then_a_second_pass_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("core-scale").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, DownstreamConfig::default());
    let desired: Vec<Value> =
        (0..1000).map(|i| mk_configmap(&ns, &format!("cm-{i:04}"), json!({"i": i.to_string()}))).collect();

    let pass = |objs: Vec<Value>| {
        let syncer = &syncer;
        futures::stream::iter(objs).map(move |d| async move { syncer.apply(d, None).await }).buffer_unordered(16)
    };
    let first: Vec<_> = pass(desired.clone()).collect().await;
    assert!(first.iter().all(|r| r.error.is_none() && r.operation == Operation::Created));

    let cms: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let versions = |list: kube::core::ObjectList<ConfigMap>| -> BTreeMap<String, String> {
        list.items
            .into_iter()
            .map(|c| (c.metadata.name.unwrap_or_default(), c.metadata.resource_version.unwrap_or_default()))
            .collect()
    };
    let before = versions(cms.list(&ListParams::default()).await?);
    assert_eq!(before.len(), 1000);

    let second: Vec<_> = pass(desired).collect().await;
    assert!(second.iter().all(|r| r.error.is_none() && r.operation == Operation::Unchanged));
    let after = versions(cms.list(&ListParams::default()).await?);
    assert_eq!(before, after, "counted downstream: not one object was written on the second pass");
    env.cleanup().await
}

#[tokio::test]
async fn a_test_env_dropped_without_cleanup_deletes_its_namespaces() -> anyhow::Result<()> {
    let env = TestEnv::new("core-drop").await?;
    let (ns, clients) = (env.namespace.clone(), [env.upstream.clone(), env.downstream.clone()]);
    // As a failed assertion would: dropped on the test's own (single-threaded) runtime.
    drop(env);
    for client in clients {
        let live = Api::<Namespace>::all(client).get_opt(&ns).await?;
        let deleted = live.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        assert!(deleted, "namespace {ns} is deleted");
    }
    Ok(())
}
