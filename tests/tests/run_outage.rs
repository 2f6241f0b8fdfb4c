//! A network outage between downsync and the downstream API server, made with a real TCP cut:
//! the loss is logged once with the server's URL and once when it returns, `/readyz?verbose`
//! and `downsync_connected` show it, kube's own per-attempt errors stay out of the log, and a
//! change made upstream during the outage syncs once the network is back. An upstream API
//! server that stops for longer than kube's default watch backoff and starts again over the same
//! etcd is taken up again and its changes sync.

use std::ffi::OsString;
use std::time::Duration;

use downsync_tests::daemon::Daemon;
use downsync_tests::objects::{create_all, mk_configmap};
use downsync_tests::proxy::{Proxy, reroute};
use downsync_tests::{TestEnv, clusters, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn a_downstream_outage_is_reported_once_each_way_and_changes_sync_after_it() -> anyhow::Result<()> {
    let env = TestEnv::new("run-outage").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "cfg", json!({"v": "0"}))]).await?;

    let c = clusters()?;
    let text = std::fs::read_to_string(&c.downstream.kubeconfig)?;
    let (server, _) = reroute(&text, "127.0.0.1:1".parse()?)?;
    let proxy = Proxy::start(server).await?;
    let (_, rerouted) = reroute(&text, proxy.addr)?;
    let kubeconfig = std::env::temp_dir().join(format!("downsync-outage-{ns}.kubeconfig"));
    std::fs::write(&kubeconfig, rerouted)?;
    let cluster_args: Vec<OsString> = vec![
        "--upstream-kubeconfig".into(),
        c.upstream.kubeconfig.clone().into(),
        "--downstream-kubeconfig".into(),
        kubeconfig.clone().into(),
    ];
    let args = ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns];
    // No RUST_LOG: the program's default log filter, as a user runs it.
    let mut d = Daemon::start_with("outage", &cluster_args, &args, None)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let value = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).and_then(|d| d.get("v").cloned());
    assert_eq!(value(down.get_opt("cfg").await?).as_deref(), Some("0"));

    proxy.cut();
    let body = eventually("readyz?verbose to show the lost downstream", Duration::from_secs(30), || async {
        let (_, body) = d.get_path("/readyz?verbose")?;
        Ok(body.contains("downstream https://").then_some(body).filter(|b| b.contains("disconnected")))
    })
    .await?;
    assert!(body.contains(&format!("downstream https://{}", proxy.addr)), "{body}");
    let gauge = d.metric("downsync_connected", &[r#"side="downstream""#])?;
    assert_eq!(gauge, 0.0);
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns)
        .patch("cfg", &PatchParams::default(), &Patch::Merge(&json!({"data": {"v": "1"}})))
        .await?;
    // Long enough for the watch to fail and retry several times.
    tokio::time::sleep(Duration::from_secs(6)).await;

    proxy.restore();
    eventually("the change made during the outage to sync", Duration::from_secs(60), || async {
        Ok((value(down.get_opt("cfg").await?).as_deref() == Some("1")).then_some(()))
    })
    .await?;
    eventually("the connection to be reported back", Duration::from_secs(30), || async {
        Ok(d.log_text().contains("connection to the API server is back").then_some(()))
    })
    .await?;
    let log = d.log_text();
    let lost: Vec<&str> = log.lines().filter(|l| l.contains("lost the connection")).collect();
    assert_eq!(lost.len(), 1, "one line for the loss; log: {}", d.log.display());
    assert!(lost[0].contains("downstream") && lost[0].contains(&proxy.addr.to_string()), "{}", lost[0]);
    assert_eq!(log.matches("connection to the API server is back").count(), 1, "log: {}", d.log.display());
    assert!(!log.contains("kube_client"), "kube's per-attempt errors stay out; log: {}", d.log.display());
    assert_eq!(d.metric("downsync_connected", &[r#"side="downstream""#])?, 1.0);
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn an_upstream_api_server_that_stops_and_starts_again_is_taken_up_again() -> anyhow::Result<()> {
    let env = TestEnv::new("run-restart").await?;
    let ns = env.namespace.clone();
    // An upstream of its own: stopping the shared one would disturb every other test.
    let up = downsync_tests::PrivateControlPlane::start(&format!("restart-up-{}", std::process::id()))?;
    let up_client = downsync_tests::ClusterRef { kubeconfig: up.kubeconfig.clone(), context: None }.client().await?;
    downsync_tests::create_namespace(&up_client, &ns).await?;
    create_all(&up_client, &ns, vec![mk_configmap(&ns, "cfg", json!({"v": "0"}))]).await?;
    let cluster_args: Vec<OsString> = vec![
        "--upstream-kubeconfig".into(),
        up.kubeconfig.clone().into(),
        "--downstream-kubeconfig".into(),
        clusters()?.downstream.kubeconfig.into(),
    ];
    let args = ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns];
    let mut d = Daemon::start_with("restart", &cluster_args, &args, None)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let value = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).and_then(|d| d.get("v").cloned());
    assert_eq!(value(down.get_opt("cfg").await?).as_deref(), Some("0"));

    up.stop_apiserver()?;
    // Longer than kube's default watch backoff needs to reach its 25.6 s step.
    tokio::time::sleep(Duration::from_secs(45)).await;
    up.start_apiserver()?;
    let back = std::time::Instant::now();
    let up_client = downsync_tests::ClusterRef { kubeconfig: up.kubeconfig.clone(), context: None }.client().await?;
    Api::<ConfigMap>::namespaced(up_client, &ns)
        .patch("cfg", &PatchParams::default(), &Patch::Merge(&json!({"data": {"v": "1"}})))
        .await?;
    eventually("the change made after the restart to sync", Duration::from_secs(60), || async {
        Ok((value(down.get_opt("cfg").await?).as_deref() == Some("1")).then_some(()))
    })
    .await?;
    eprintln!("run-restart: the change synced {:.1} s after the API server was ready", back.elapsed().as_secs_f64());
    let log = d.log_text();
    assert_eq!(log.matches("lost the connection").count(), 1, "log: {}", d.log.display());
    assert_eq!(log.matches("connection to the API server is back").count(), 1, "log: {}", d.log.display());
    assert!(d.terminate()?.success());
    drop(up);
    env.cleanup().await
}
