//! The built-in rule plugins through the syncer against a real downstream apiserver: what the
//! apiserver allocates (clusterIP, nodePorts) and what other controllers set (PV binding,
//! ServiceAccount secrets) survives upstream updates, under each update strategy.

use downsync::kube::KubeDownstream;
use downsync::plugin::{EngineConfig, Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet, RegistryConfig};
use downsync::sync::{DownstreamConfig, Operation, StateCache, Syncer, UpdateStrategy};
use downsync_tests::TestEnv;
use downsync_tests::plugins::plugin_path;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn mk_rules(crates: &[&str]) -> PluginRegistry {
    let engine = PluginEngine::new(EngineConfig::default()).expect("engine");
    let plugins =
        crates.iter().map(|c| Plugin::load_file(&engine, &plugin_path(c).expect("built")).expect("loads")).collect();
    PluginRegistry::new(PluginSet::new(plugins, &RegistryConfig::default()).expect("no overlap"), Metrics::default())
}

fn mk_syncer(
    client: &Client,
    rules: PluginRegistry,
    strategy: UpdateStrategy,
) -> Syncer<KubeDownstream, PluginRegistry> {
    Syncer::new(
        KubeDownstream::new(client.clone()),
        rules,
        DownstreamConfig { strategy, ..DownstreamConfig::default() },
        StateCache::new(),
    )
}

fn mk_nodeport_service(ns: &str, name: &str, target_port: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "NodePort",
            "selector": {"app": name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": target_port},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            ],
        },
    })
}

fn node_ports(svc: &Service) -> Vec<Option<i32>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ps| ps.iter().map(|p| p.node_port).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_nodeport_service_keeps_its_cluster_ip_and_node_ports_under_every_strategy() -> anyhow::Result<()> {
    let env = TestEnv::new("plugins-service").await?;
    let ns = env.namespace.clone();
    let services: Api<Service> = Api::namespaced(env.downstream.clone(), &ns);
    let strategies = [
        ("replace", UpdateStrategy::Replace),
        ("merge", UpdateStrategy::Merge),
        ("ssa", UpdateStrategy::ServerSideApply { field_manager: "downsync".into(), force: true }),
    ];
    for (name, strategy) in strategies {
        let syncer = mk_syncer(&env.downstream, mk_rules(&["downsync-plugin-service"]), strategy);
        let r = syncer.apply(mk_nodeport_service(&ns, name, 8080), None).await;
        assert!(r.error.is_none(), "{name}: {:?}", r.error);
        let before = services.get(name).await?;
        let ip = before.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        assert!(ip.is_some(), "{name}: allocated");
        assert!(node_ports(&before).iter().all(Option::is_some), "{name}: node ports allocated");

        // Upstream changes the targetPort; it never knew the allocated values.
        let r = syncer.apply(mk_nodeport_service(&ns, name, 9090), None).await;
        assert!(r.error.is_none(), "{name}: {:?}", r.error);
        assert_eq!(r.operation, Operation::Updated, "{name}");
        let after = services.get(name).await?;
        assert_eq!(after.spec.as_ref().and_then(|s| s.cluster_ip.clone()), ip, "{name}: clusterIP kept");
        assert_eq!(node_ports(&after), node_ports(&before), "{name}: nodePorts kept, matched by port+protocol");
        let target = after
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first().cloned())
            .and_then(|p| p.target_port);
        assert_eq!(serde_json::to_value(target)?, json!(9090), "{name}: the upstream change landed");

        let again = syncer.apply(mk_nodeport_service(&ns, name, 9090), None).await;
        assert_eq!(again.operation, Operation::Unchanged, "{name}: allocated fields are not drift");
    }
    env.cleanup().await
}

#[tokio::test]
async fn a_service_account_keeps_secrets_added_downstream() -> anyhow::Result<()> {
    let env = TestEnv::new("plugins-sa").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, mk_rules(&["downsync-plugin-service-account"]), UpdateStrategy::Replace);
    let sa = |pull: &[&str]| {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": ns},
               "imagePullSecrets": pull.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()})
    };
    assert!(syncer.apply(sa(&["upstream-pull"]), None).await.error.is_none());
    let sas: Api<ServiceAccount> = Api::namespaced(env.downstream.clone(), &ns);
    let patch = json!({"secrets": [{"name": "token-added-downstream"}]});
    sas.patch("app", &PatchParams::default(), &Patch::Merge(&patch)).await?;

    let r = syncer.apply(sa(&["upstream-pull", "second-pull"]), None).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let live = sas.get("app").await?;
    let names = |v: Option<Vec<k8s_openapi::api::core::v1::ObjectReference>>| -> Vec<String> {
        v.unwrap_or_default().into_iter().filter_map(|r| r.name).collect()
    };
    assert_eq!(names(live.secrets), ["token-added-downstream"]);
    let pulls: Vec<String> = live.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect();
    assert_eq!(pulls, ["upstream-pull", "second-pull"]);
    env.cleanup().await
}

#[tokio::test]
async fn an_immutable_secret_is_recreated_by_the_immutable_config_rule() -> anyhow::Result<()> {
    let env = TestEnv::new("plugins-immutable").await?;
    let ns = env.namespace.clone();
    let syncer = mk_syncer(&env.downstream, mk_rules(&["downsync-plugin-immutable-config"]), UpdateStrategy::Replace);
    let secret = |v: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns},
               "immutable": true, "stringData": {"password": v}})
    };
    assert!(syncer.apply(secret("one"), None).await.error.is_none());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.downstream.clone(), &ns);
    let before = secrets.get("creds").await?.metadata.uid;
    let r = syncer.apply(secret("two"), None).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.operation, Operation::Recreated, "the rule decides before the API refuses");
    let after = secrets.get("creds").await?;
    assert_ne!(after.metadata.uid, before);
    assert_eq!(after.data.and_then(|d| d.get("password").map(|b| b.0.clone())), Some(b"two".to_vec()));
    env.cleanup().await
}
