//! Namespaces through `downsync run` between two real control planes: each downstream namespace
//! is created once however many workers need it, a namespace downsync created goes when its
//! upstream namespace goes (unless something downsync does not own lives in it), and the
//! clusters' own system namespaces are left out unless named.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use downsync_tests::daemon::{Daemon, cluster_args, run_to_end};
use downsync_tests::objects::{create_all, mk_configmap, owned};
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// `POST namespaces` answered 409 so far, from the API server's own request counter.
async fn namespace_create_conflicts(client: &Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains(r#"resource="namespaces""#) && l.contains(r#"verb="POST""#) && l.contains(r#"code="409""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn create_ns(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("downsync.dev/test".into(), "true".into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Whether a namespace is gone or going.
async fn gone_or_going(client: &Client, name: &str) -> anyhow::Result<bool> {
    let ns = Api::<Namespace>::all(client.clone()).get_opt(name).await?;
    Ok(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()))
}

#[tokio::test]
async fn namespaces_are_created_once_and_removed_with_their_upstream_namespace() -> anyhow::Result<()> {
    let env = TestEnv::new("run-ns").await?;
    let base = env.namespace.clone();
    let upstream_names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| format!("{base}-{s}")).collect();
    let prefix = format!("p{}-", &base[base.len() - 6..]);
    for ns in &upstream_names {
        create_ns(&env.upstream, ns).await?;
        let cms = (0..100).map(|i| mk_configmap(ns, &format!("cm-{i:03}"), json!({"i": i.to_string()}))).collect();
        create_all(&env.upstream, ns, cms).await?;
    }
    let conflicts_before = namespace_create_conflicts(&env.downstream).await?;

    let mut args: Vec<String> =
        ["--resource", "v1/ConfigMap", "--target", &base, "--workers", "16"].iter().map(|s| (*s).to_string()).collect();
    args.extend(["--namespace-prefix".into(), prefix.clone()]);
    for ns in &upstream_names {
        args.extend(["--namespace".into(), ns.clone()]);
    }
    let mut d = Daemon::start("namespaces", &args)?;
    d.wait_ready(Duration::from_secs(120)).await?;
    for ns in &upstream_names {
        let down_ns = format!("{prefix}{ns}");
        assert_eq!(owned(&env.downstream, &down_ns, &base).await?.len(), 100, "{down_ns}; log: {}", d.log.display());
    }
    let conflicts = namespace_create_conflicts(&env.downstream).await? - conflicts_before;
    assert_eq!(conflicts, 0.0, "each namespace is created once, with no racing creates; log: {}", d.log.display());
    assert_eq!(d.log_text().matches("created downstream namespace").count(), 4, "log: {}", d.log.display());

    // Something downsync does not own lives in b's copy: that namespace must stay.
    let (down_a, down_b) = (format!("{prefix}{}", upstream_names[0]), format!("{prefix}{}", upstream_names[1]));
    let squatter: ConfigMap = serde_json::from_value(mk_configmap(&down_b, "squatter", json!({"mine": "yes"})))?;
    Api::<ConfigMap>::namespaced(env.downstream.clone(), &down_b).create(&PostParams::default(), &squatter).await?;

    for ns in &upstream_names[..2] {
        Api::<Namespace>::all(env.upstream.clone()).delete(ns, &DeleteParams::default()).await?;
    }
    eventually("the namespace downsync created to go with its upstream namespace", Duration::from_secs(90), || async {
        Ok(gone_or_going(&env.downstream, &down_a).await?.then_some(()))
    })
    .await?;
    eventually("the owned copies in the kept namespace to go", Duration::from_secs(60), || async {
        Ok(owned(&env.downstream, &down_b, &base).await?.is_empty().then_some(()))
    })
    .await?;
    // Give the cleanup its chance to (wrongly) act on b too.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!gone_or_going(&env.downstream, &down_b).await?, "a namespace holding an unowned object stays");
    let kept = Api::<ConfigMap>::namespaced(env.downstream.clone(), &down_b).get("squatter").await?;
    assert_eq!(kept.data.and_then(|d| d.get("mine").cloned()).as_deref(), Some("yes"));
    for ns in &upstream_names[2..] {
        let down_ns = format!("{prefix}{ns}");
        assert!(!gone_or_going(&env.downstream, &down_ns).await?, "{down_ns} still has its upstream namespace");
        assert_eq!(owned(&env.downstream, &down_ns, &base).await?.len(), 100);
    }
    assert!(d.terminate()?.success());

    for ns in &upstream_names[2..] {
        Api::<Namespace>::all(env.upstream.clone()).delete(ns, &DeleteParams::background()).await?;
    }
    for ns in &upstream_names {
        let _ = Api::<Namespace>::all(env.downstream.clone())
            .delete(&format!("{prefix}{ns}"), &DeleteParams::background())
            .await;
    }
    env.cleanup().await
}

#[tokio::test]
async fn system_namespaces_are_left_out_unless_named() -> anyhow::Result<()> {
    let diff = |extra: &[&str]| -> anyhow::Result<String> {
        let mut a: Vec<OsString> = vec!["diff".into(), "--resource".into(), "v1/ConfigMap".into()];
        a.extend(cluster_args()?);
        a.extend(["--target".into(), format!("sysns-{}", std::process::id()).into()]);
        a.extend(extra.iter().map(OsString::from));
        let (_, stdout, stderr) = run_to_end(&a)?;
        Ok(format!("{stdout}\n{stderr}"))
    };
    // The API server makes this one itself, on every cluster.
    let system_object = "kube-system/extension-apiserver-authentication";
    let all = diff(&[])?;
    for ns in ["kube-system/", "kube-public/", "kube-node-lease/"] {
        assert!(!all.contains(ns), "without a namespace list, {ns} is left out:\n{all}");
    }
    let named = diff(&["--namespace", "kube-system"])?;
    assert!(named.contains(system_object), "an explicit entry overrides the default:\n{named}");
    Ok(())
}
