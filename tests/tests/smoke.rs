//! Smoke tests of the test control planes themselves: CRUD through kube-rs and cascade
//! deletion by the real garbage collector, on both the upstream and the downstream.

use std::time::Duration;

use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn mk_configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn mk_deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .expect("valid deployment")
}

async fn configmap_round_trip(client: Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let created = api.create(&PostParams::default(), &mk_configmap("smoke", &[("greeting", "hello")])).await?;
    assert!(created.metadata.uid.is_some(), "the apiserver assigns a uid");

    let read = api.get("smoke").await?;
    assert_eq!(read.data.unwrap_or_default().get("greeting").map(String::as_str), Some("hello"));

    api.delete("smoke", &DeleteParams::default()).await?;
    assert!(api.get_opt("smoke").await?.is_none(), "a ConfigMap has no finalizers, so it is gone at once");
    Ok(())
}

#[tokio::test]
async fn configmaps_are_created_read_and_deleted_on_both_sides() -> anyhow::Result<()> {
    let env = TestEnv::new("smoke-crud").await?;
    configmap_round_trip(env.upstream.clone(), &env.namespace).await?;
    configmap_round_trip(env.downstream.clone(), &env.namespace).await?;
    env.cleanup().await
}

async fn cascade(client: Client, ns: &str) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client, ns);
    let owner = deployments.create(&PostParams::default(), &mk_deployment("owner")).await?;

    let mut dependent = mk_configmap("owned-by-deployment", &[("k", "v")]);
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    }]);
    configmaps.create(&PostParams::default(), &dependent).await?;
    let bystander = configmaps.create(&PostParams::default(), &mk_configmap("bystander", &[])).await?;

    deployments.delete("owner", &DeleteParams::background()).await?;
    eventually("the garbage collector to delete the dependent ConfigMap", Duration::from_secs(90), || async {
        Ok(configmaps.get_opt("owned-by-deployment").await?.is_none().then_some(()))
    })
    .await?;
    let still = configmaps.get_opt("bystander").await?;
    assert_eq!(still.and_then(|c| c.metadata.uid), bystander.metadata.uid, "an unowned ConfigMap survives");
    Ok(())
}

#[tokio::test]
async fn the_garbage_collector_cascades_deletes_on_both_sides() -> anyhow::Result<()> {
    let env = TestEnv::new("smoke-gc").await?;
    cascade(env.upstream.clone(), &env.namespace).await?;
    cascade(env.downstream.clone(), &env.namespace).await?;
    env.cleanup().await
}
