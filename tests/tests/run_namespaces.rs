//! Namespaces through `downsync run` between two real control planes: each downstream namespace
//! is created once however many workers need it, a namespace downsync created goes when its
//! upstream namespace goes (unless something downsync does not own lives in it, or the downstream
//! RBAC does not grant namespace `delete`), and the
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

/// A copy of the downstream kubeconfig that acts as user `user` (impersonation by the test's
/// admin credentials), so downsync runs with only what that user is granted.
fn impersonating(user: &str) -> anyhow::Result<std::path::PathBuf> {
    let down = &downsync_tests::clusters()?.downstream;
    let mut kc = kube::config::Kubeconfig::read_from(&down.kubeconfig)?;
    let current = down.context.clone().or_else(|| kc.current_context.clone());
    let ctx = kc.contexts.iter().find(|c| Some(&c.name) == current.as_ref()).and_then(|c| c.context.as_ref());
    let auth_name = ctx.and_then(|c| c.user.clone()).unwrap_or_default();
    for a in &mut kc.auth_infos {
        if a.name == auth_name
            && let Some(info) = a.auth_info.as_mut()
        {
            info.impersonate = Some(user.to_string());
        }
    }
    let path = std::env::temp_dir().join(format!("downsync-ns-{user}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml_ng::to_string(&kc)?)?;
    Ok(path)
}

/// What a downsync syncing ConfigMaps needs downstream, with namespaces `create` but no `delete`,
/// bound to user `user`, and reading every kind, which namespace cleanup looks with (the
/// deployed RBAC binds `view`; this control plane runs no role aggregation to fill it).
async fn grant_without_namespace_delete(client: &Client, user: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| (*s).to_string()).collect()),
        resources: Some(resources.iter().map(|s| (*s).to_string()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_string()).collect(),
        ..PolicyRule::default()
    };
    let all = ["get", "list", "watch", "create", "update", "patch", "delete"];
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some(user.into()), ..ObjectMeta::default() },
        rules: Some(vec![
            rule(&[""], &["configmaps"], &all),
            rule(&[""], &["namespaces"], &["get", "list", "watch", "create"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
            rule(&["*"], &["*"], &["get", "list", "watch"]),
        ]),
        ..ClusterRole::default()
    };
    let pp = PostParams::default();
    Api::<ClusterRole>::all(client.clone()).create(&pp, &role).await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(user.into()), ..ObjectMeta::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: user.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            ..Subject::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone()).create(&pp, &binding).await?;
    Ok(())
}

#[tokio::test]
async fn without_namespace_delete_in_its_rbac_downsync_keeps_the_namespaces_it_created() -> anyhow::Result<()> {
    let env = TestEnv::new("run-ns-rbac").await?;
    let base = env.namespace.clone();
    let upstream_ns = format!("{base}-gone");
    let prefix = format!("k{}-", &base[base.len() - 6..]);
    let down_ns = format!("{prefix}{upstream_ns}");
    create_ns(&env.upstream, &upstream_ns).await?;
    let cms = (0..5).map(|i| mk_configmap(&upstream_ns, &format!("cm-{i}"), json!({"i": i.to_string()}))).collect();
    create_all(&env.upstream, &upstream_ns, cms).await?;
    let user = format!("downsync-{base}");
    grant_without_namespace_delete(&env.downstream, &user).await?;

    let mut clusters = cluster_args()?;
    let at = clusters.iter().position(|a| a == "--downstream-kubeconfig").expect("the flag") + 1;
    clusters[at] = impersonating(&user)?.into();
    let args: Vec<String> =
        ["--resource", "v1/ConfigMap", "--target", &base, "--namespace", &upstream_ns, "--namespace-prefix", &prefix]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
    let mut d = Daemon::start_with("namespaces-rbac", &clusters, &args, Some("info,downsync=debug"))?;
    d.wait_ready(Duration::from_secs(120)).await?;
    assert_eq!(owned(&env.downstream, &down_ns, &base).await?.len(), 5, "log: {}", d.log.display());

    Api::<Namespace>::all(env.upstream.clone()).delete(&upstream_ns, &DeleteParams::default()).await?;
    eventually("the owned copies to go with their upstream namespace", Duration::from_secs(60), || async {
        Ok(owned(&env.downstream, &down_ns, &base).await?.is_empty().then_some(()))
    })
    .await?;
    eventually("downsync to say why it keeps the namespace", Duration::from_secs(60), || async {
        Ok(d.log_text().contains("does not let downsync delete namespaces").then_some(()))
    })
    .await?;
    assert!(!gone_or_going(&env.downstream, &down_ns).await?, "the RBAC keeps the namespace; log: {}", d.log.display());
    assert!(d.terminate()?.success());

    let _ = Api::<Namespace>::all(env.downstream.clone()).delete(&down_ns, &DeleteParams::background()).await;
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(env.downstream.clone())
        .delete(&user, &DeleteParams::default())
        .await;
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(env.downstream.clone())
        .delete(&user, &DeleteParams::default())
        .await;
    env.cleanup().await
}
