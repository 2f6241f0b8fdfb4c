//! `downsync run`, the binary, with rules 0.2.0: what a client asked for upstream travels,
//! what the upstream server allocated does not. A Service's requested `nodePort` is kept
//! downstream; its allocated ones and its `clusterIP` are left to the downstream cluster and
//! are never seen as drift; a requested port another Service already holds downstream is
//! reported by name and retried while everything else syncs. A 0.1.0 and a 0.2.0 plugin run
//! in the same syncer.

use std::collections::BTreeMap;
use std::time::Duration;

use downsync::sync::Intent;
use downsync_tests::daemon::{Daemon, builtin_plugins_dir};
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// `run` over Services and ConfigMaps of `ns`, with the built-in plugins plus the 0.1.0 test
/// component and the 0.2.0 `minimal` one (both stamp ConfigMaps).
fn args(ns: &str) -> anyhow::Result<Vec<String>> {
    let plugins = builtin_plugins_dir(ns)?;
    for (krate, file) in
        [("downsync-plugin-testing-legacy", "legacy.wasm"), ("downsync-plugin-minimal", "minimal.wasm")]
    {
        std::fs::copy(plugin_path(krate)?, plugins.join(file))?;
    }
    let mut a: Vec<String> = ["--resource", "v1/Service", "--resource", "v1/ConfigMap"].map(String::from).to_vec();
    a.extend(["--namespace", ns, "--target", ns].map(String::from));
    a.extend(["--plugins-dir".to_string(), plugins.display().to_string()]);
    Ok(a)
}

/// A nodePort in the default range that this test alone asks for: the control planes are shared.
fn node_port(ns: &str, salt: u32) -> i32 {
    let h = ns.bytes().fold(salt.wrapping_mul(0x9e37_79b9), |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    30_000 + i32::try_from(h % 2_700).unwrap_or(0)
}

async fn create(client: &Client, ns: &str, svc: Value) -> anyhow::Result<Service> {
    let svc: Service = serde_json::from_value(svc)?;
    Ok(Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &svc).await?)
}

fn node_ports(svc: &Service) -> Vec<Option<i32>> {
    svc.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| p.node_port).collect()
}

fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.clone())
}

async fn resource_versions(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let list = Api::<Service>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.unwrap_or_default(), s.metadata.resource_version.unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn a_requested_node_port_travels_and_allocated_fields_stay_downstream_without_drift() -> anyhow::Result<()> {
    let env = TestEnv::new("run-intent").await?;
    let ns = env.namespace.clone();
    let asked = node_port(&ns, 1);
    // Port 80 asks for a nodePort; port 81 and the whole of "allocated" leave it to the server.
    let up_asked = create(
        &env.upstream,
        &ns,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "asked", "namespace": ns},
        "spec": {"type": "NodePort", "selector": {"app": "a"},
            "ports": [{"name": "http", "port": 80, "nodePort": asked}, {"name": "other", "port": 81}]}}),
    )
    .await?;
    let up_allocated = create(
        &env.upstream,
        &ns,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "allocated", "namespace": ns},
        "spec": {"type": "NodePort", "selector": {"app": "b"}, "ports": [{"name": "http", "port": 80}]}}),
    )
    .await?;
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg", "namespace": ns}, "data": {"k": "v"}}))?;
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).create(&PostParams::default(), &cm).await?;

    let mut d = Daemon::start("intent", &args(&ns)?)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let services: Api<Service> = Api::namespaced(env.downstream.clone(), &ns);
    let down_asked = services.get("asked").await?;
    let down_allocated = services.get("allocated").await?;

    // The requested port travelled; port 81's upstream allocation did not.
    let ports = node_ports(&down_asked);
    assert_eq!(ports[0], Some(asked), "the nodePort a client asked for is kept");
    assert!(ports[1].is_some(), "the downstream cluster allocated port 81 its own nodePort");
    // What downsync sent is what downstream's own managedFields say a client set: the
    // requested port, and none of what the upstream server allocated.
    let sent = Intent::of(&serde_json::to_value(&down_asked)?);
    assert!(sent.requested("/spec/ports/0/nodePort"), "{sent:?}");
    for path in ["/spec/ports/1/nodePort", "/spec/clusterIP", "/spec/clusterIPs"] {
        assert!(!sent.requested(path), "{path} was sent downstream: {sent:?}");
    }
    let sent = Intent::of(&serde_json::to_value(&down_allocated)?);
    for path in ["/spec/ports/0/nodePort", "/spec/clusterIP"] {
        assert!(!sent.requested(path), "{path} of an allocated Service was sent downstream: {sent:?}");
    }
    assert!(cluster_ip(&down_allocated).is_some() && node_ports(&down_allocated)[0].is_some());
    assert!(up_allocated.spec.as_ref().and_then(|s| s.cluster_ip.as_ref()).is_some());
    assert_eq!(node_ports(&up_asked)[0], Some(asked));

    // The 0.1.0 and the 0.2.0 plugin both ran on the ConfigMap, in one syncer.
    let cm = Api::<ConfigMap>::namespaced(env.downstream.clone(), &ns).get("cfg").await?;
    let annotations = cm.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("downsync.dev/legacy").map(String::as_str), Some("0.1.0"), "0.1.0 plugin");
    assert_eq!(annotations.get("downsync.dev/minimal").map(String::as_str), Some("seen"), "0.2.0 plugin");
    assert_eq!(cm.data.unwrap_or_default().get("k").map(String::as_str), Some("v"));

    // No drift: a restart re-syncs every object and writes none of them.
    let before = resource_versions(&env.downstream, &ns).await?;
    d.terminate()?;
    let mut d = Daemon::start("intent-restart", &args(&ns)?)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    assert!(
        d.metric("downsync_syncs_total", &[r#"kind="Service""#, r#"operation="unchanged""#])? >= 2.0,
        "both Services were looked at again"
    );
    assert_eq!(resource_versions(&env.downstream, &ns).await?, before, "no Service was written on the resync");

    // An upstream change is written, and the downstream allocations stay as they were.
    Api::<Service>::namespaced(env.upstream.clone(), &ns)
        .patch("allocated", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}})))
        .await?;
    let updated = eventually("the label to arrive downstream", Duration::from_secs(30), || async {
        let s = services.get("allocated").await?;
        Ok(s.metadata.labels.as_ref().is_some_and(|l| l.get("tier").is_some_and(|t| t == "web")).then_some(s))
    })
    .await?;
    assert_eq!(cluster_ip(&updated), cluster_ip(&down_allocated), "the downstream clusterIP is kept");
    assert_eq!(node_ports(&updated), node_ports(&down_allocated), "the downstream nodePort is kept");
    d.terminate()?;
    env.cleanup().await
}

#[tokio::test]
async fn a_requested_node_port_taken_downstream_is_reported_by_name_and_retried_while_others_sync() -> anyhow::Result<()>
{
    let env = TestEnv::new("run-port-taken").await?;
    let ns = env.namespace.clone();
    let port = node_port(&ns, 2);
    // Someone else's Service holds the port downstream.
    create(
        &env.downstream,
        &ns,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "squatter", "namespace": ns},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}}),
    )
    .await?;
    create(
        &env.upstream,
        &ns,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "wants", "namespace": ns},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": port}]}}),
    )
    .await?;
    create(
        &env.upstream,
        &ns,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bystander", "namespace": ns},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}}),
    )
    .await?;

    let d = Daemon::start("port-taken", &args(&ns)?)?;
    let services: Api<Service> = Api::namespaced(env.downstream.clone(), &ns);
    eventually("the bystander to sync", Duration::from_secs(60), || async { Ok(services.get_opt("bystander").await?) })
        .await?;
    let events: Api<Event> = Api::namespaced(env.upstream.clone(), &ns);
    let event = eventually("an AlreadyAllocated event on the upstream Service", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("AlreadyAllocated") && e.involved_object.name.as_deref() == Some("wants")
        }))
    })
    .await?;
    let message = event.message.unwrap_or_default();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(message.contains(&format!("Service {ns}/wants")), "names the Service: {message}");
    assert!(
        message.contains("/spec/ports/0/nodePort") && message.contains(&port.to_string()),
        "names the port: {message}"
    );
    assert!(d.metric("downsync_sync_failures_total", &[r#"kind="Service""#, r#"reason="AlreadyAllocated""#])? >= 1.0);
    let squatter = services.get("squatter").await?;
    assert_eq!(node_ports(&squatter), vec![Some(port)], "the other Service is untouched");
    assert!(services.get_opt("wants").await?.is_none());
    eventually("a retry", Duration::from_secs(30), || async {
        let n = d.metric("downsync_sync_failures_total", &[r#"kind="Service""#, r#"reason="AlreadyAllocated""#])?;
        Ok((n >= 2.0).then_some(()))
    })
    .await?;
    let log = d.log_text();
    let lines = log.lines().filter(|l| l.contains("sync failed") && l.contains("wants") && l.contains("WARN")).count();
    assert_eq!(lines, 1, "one warning for the state, not one per retry:\n{log}");

    // The port is let go: the retry with backoff takes it.
    services.delete("squatter", &DeleteParams::default()).await?;
    let wants = eventually("the Service to get its port", Duration::from_secs(60), || async {
        Ok(services.get_opt("wants").await?)
    })
    .await?;
    assert_eq!(node_ports(&wants), vec![Some(port)]);
    d.terminate()?;
    env.cleanup().await
}
