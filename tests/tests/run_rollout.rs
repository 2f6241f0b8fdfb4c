//! Safe rollout of rule plugins in `downsync run`, the binary, against the real apiservers: a
//! new version in shadow is compared and not applied, promoted by hand or after a clean
//! window; a release that traps on every call rolls itself back while its kind keeps syncing;
//! `plugin status`, `/readyz?verbose`, `explain` and `plugin replay` say what happened.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use downsync_plugin_testing_stamp::{MARKER, TRAP, variant};
use downsync_tests::bench::reload::patch_bytes;
use downsync_tests::daemon::{Daemon, builtin_plugins_dir, cluster_args, run_to_end};
use downsync_tests::objects::{STAMP, all_stamped, stamps};
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sha2::Digest;

/// The stamp component with `marker` in place of its own.
fn stamp_version(marker: &str) -> anyhow::Result<Vec<u8>> {
    let base = std::fs::read(plugin_path("downsync-plugin-testing-stamp")?)?;
    patch_bytes(&base, MARKER.as_bytes(), marker.as_bytes())
}

/// The same component with a custom section added: a new digest, the same behaviour.
fn rebuilt(wasm: &[u8]) -> Vec<u8> {
    let name = b"downsync-test-rebuild";
    let mut payload = vec![u8::try_from(name.len()).unwrap_or(0)];
    payload.extend_from_slice(name);
    payload.extend_from_slice(b"2");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(u8::try_from(payload.len()).unwrap_or(0));
    out.extend(payload);
    out
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces the plugin file the way an operator's tooling does: write aside, then rename.
fn install(dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(".stamp.wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join("stamp.wasm"))?;
    Ok(())
}

async fn create_configmaps(client: &Client, ns: &str, n: usize) -> anyhow::Result<()> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    for i in 0..n {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}"), "namespace": ns}, "data": {"i": i.to_string()}}),
        )?;
        api.create(&PostParams::default(), &cm).await?;
    }
    Ok(())
}

fn run_args(ns: &str, plugins: &Path, kinds: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    for k in kinds {
        a.extend(["--resource".to_string(), (*k).to_string()]);
    }
    a.extend(["--namespace", ns, "--target", ns].map(String::from));
    a.extend(["--plugins-dir".to_string(), plugins.display().to_string()]);
    a
}

fn write_config(dir: &Path, yaml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.with_extension("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

#[tokio::test]
async fn a_shadow_version_is_compared_not_applied_until_promoted_and_replay_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("run-rollout-shadow").await?;
    let ns = env.namespace.clone();
    let n = 3;
    create_configmaps(&env.upstream, &ns, n).await?;
    let plugins = builtin_plugins_dir(&ns)?;
    let v1 = stamp_version(&variant(1))?;
    install(&plugins, &v1)?;
    // Shadow first, a window of 3 calls (one per ConfigMap), promoted automatically when clean.
    let config = write_config(&plugins, "plugins:\n  stamp:\n    rollout:\n      mode: shadow\n")?;
    let mut args = run_args(&ns, &plugins, &["v1/ConfigMap"]);
    args.extend(["--trial-window-calls", "3", "--config"].map(String::from));
    args.push(config.display().to_string());
    let mut d = Daemon::start("rollout-shadow", &args)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let (one, two) = (variant(1), variant(2));
    eventually("v1 stamps", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, n, &one).await?.then_some(()))
    })
    .await?;
    let before = stamps(&env.downstream, &ns).await?;

    // A divergent version runs in shadow: compared on every ConfigMap, never written.
    let v2 = stamp_version(&two)?;
    install(&plugins, &v2)?;
    let status = eventually("the shadow window to close divergent", Duration::from_secs(60), || async {
        let s = d.plugin_status("stamp")?;
        Ok((s["rollout"]["shadow"]["awaitingPromotion"] == true).then_some(s))
    })
    .await?;
    let shadow = &status["rollout"]["shadow"];
    assert_eq!(shadow["digest"], sha256(&v2), "{status}");
    assert_eq!(status["digest"], sha256(&v1), "the active version is still v1: {status}");
    assert!(shadow["divergences"].as_u64() >= Some(3), "every ConfigMap diverged: {status}");
    let divergence = shadow["lastDivergence"].as_str().unwrap_or_default();
    assert!(divergence.contains("/metadata/annotations/bench.downsync.dev~1stamp"), "{divergence}");
    assert!(!divergence.contains(&two), "values are never reported: {divergence}");
    assert_eq!(stamps(&env.downstream, &ns).await?, before, "nothing was written while in shadow");
    assert!(d.metric("downsync_plugin_shadow_divergences_total", &[r#"plugin="stamp""#])? >= 3.0);
    let (code, text, err) =
        run_to_end(&["plugin", "status", "--addr", &format!("http://{}", d.addr)].map(OsString::from))?;
    assert!(code.success(), "{err}");
    assert!(text.contains("awaiting promotion") && text.contains(&sha256(&v2)[..12]), "{text}");

    // Promoted by hand: the divergent version now writes.
    let (code, _, err) = run_to_end(&[OsString::from("plugin"), "promote".into(), plugins.join("stamp.wasm").into()])?;
    assert!(code.success(), "{err}");
    eventually("v2 stamps after the promotion", Duration::from_secs(60), || async {
        Ok(all_stamped(&env.downstream, &ns, n, &two).await?.then_some(()))
    })
    .await?;

    // A rebuild that behaves the same: a clean window promotes it by itself.
    let v2b = rebuilt(&v2);
    install(&plugins, &v2b)?;
    eventually("the clean shadow to be promoted", Duration::from_secs(60), || async {
        let s = d.plugin_status("stamp")?;
        Ok((s["digest"] == sha256(&v2b) && s["rollout"]["shadow"].is_null()).then_some(()))
    })
    .await?;
    assert_eq!(d.metric("downsync_plugin_promotions_total", &[r#"plugin="stamp""#])?, 2.0);
    assert!(all_stamped(&env.downstream, &ns, n, &two).await?);

    // Replay: what v3 would write differently, per object; nothing is written.
    let settled = eventually("the writes of the promotion to settle", Duration::from_secs(30), || async {
        let a = stamps(&env.downstream, &ns).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let b = stamps(&env.downstream, &ns).await?;
        Ok((a == b).then_some(b))
    })
    .await?;
    let v3_file = plugins.with_extension("v3.wasm");
    std::fs::write(&v3_file, stamp_version(&variant(3))?)?;
    let mut replay: Vec<OsString> =
        vec!["plugin".into(), "replay".into(), v3_file.clone().into(), "--against-cluster".into()];
    replay.extend(cluster_args()?);
    replay.extend(run_args(&ns, &plugins, &["v1/ConfigMap"]).into_iter().map(OsString::from));
    let (code, text, err) = run_to_end(&replay)?;
    assert!(code.success(), "replay failed: {err}\n{text}");
    for i in 0..n {
        assert!(text.contains(&format!("~ ConfigMap {ns}/cm-{i}")), "cm-{i} is not reported: {text}");
    }
    assert!(text.contains(&format!("-    {STAMP}: {two}")) || text.contains(&two), "{text}");
    assert!(text.contains(&variant(3)), "{text}");
    assert!(text.contains(&format!("{n} would change")), "{text}");
    assert_eq!(stamps(&env.downstream, &ns).await?, settled, "replay wrote nothing");

    d.terminate()?;
    env.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_release_that_traps_rolls_back_by_itself_and_explain_names_the_keeper_of_cluster_ip() -> anyhow::Result<()> {
    let env = TestEnv::new("run-rollout-rollback").await?;
    let ns = env.namespace.clone();
    let n = 6;
    create_configmaps(&env.upstream, &ns, n).await?;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))?;
    let up_svc = Api::<Service>::namespaced(env.upstream.clone(), &ns).create(&PostParams::default(), &svc).await?;
    let plugins = builtin_plugins_dir(&ns)?;
    let v1 = stamp_version(&variant(1))?;
    install(&plugins, &v1)?;
    // The default rollout: no shadow, a direct swap on trial, rolled back past 50% failures.
    // As in a Deployment, the pod's name and namespace come from the Downward API.
    let pod = [("POD_NAME", "downsync-test-pod"), ("POD_NAMESPACE", ns.as_str())];
    let args = run_args(&ns, &plugins, &["v1/ConfigMap", "v1/Service"]);
    let mut d = Daemon::start_with_env("rollout-rollback", &cluster_args()?, &args, Some("info,downsync=debug"), &pod)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let one = variant(1);
    eventually("v1 stamps", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, n, &one).await?.then_some(()))
    })
    .await?;

    // A release that traps on every call is swapped in, fails, and is taken out.
    let broken = stamp_version(TRAP)?;
    install(&plugins, &broken)?;
    let status = eventually("the broken release to be rolled back", Duration::from_secs(60), || async {
        let s = d.plugin_status("stamp")?;
        Ok((s["rollbacks"].as_u64() == Some(1) && s["digest"] == sha256(&v1)).then_some(s))
    })
    .await?;
    let refused = status["refusedVersion"].as_str().unwrap_or_default();
    assert!(refused.contains("rolled back") && refused.contains(&sha256(&broken)), "{status}");
    assert_eq!(status["lastError"]["failure"], "trap", "{status}");
    assert_eq!(d.metric("downsync_plugin_rollbacks_total", &[r#"plugin="stamp""#])?, 1.0);
    let (code, verbose) = d.get_path("/readyz?verbose")?;
    assert_eq!(code, 200, "{verbose}");
    assert!(verbose.contains("plugin stamp fails at run time"), "{verbose}");

    // Its kind keeps syncing, on the old version.
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns)
        .patch("cm-0", &PatchParams::default(), &Patch::Merge(json!({"data": {"after": "rollback"}})))
        .await?;
    let cm = eventually("cm-0's change to sync on v1", Duration::from_secs(60), || async {
        let cm = Api::<ConfigMap>::namespaced(env.downstream.clone(), &ns).get("cm-0").await?;
        Ok(cm.data.as_ref().is_some_and(|d| d.get("after").is_some_and(|v| v == "rollback")).then_some(cm))
    })
    .await?;
    assert_eq!(cm.metadata.annotations.unwrap_or_default().get(STAMP), Some(&one));
    assert!(d.log_text().contains("plugin version rolled back; the previous version serves again"));
    // And an Event on downsync's pod says so.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.downstream.clone(), &ns);
    let event = eventually("a PluginRolledBack Event on the pod", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| e.reason.as_deref() == Some("PluginRolledBack")))
    })
    .await?;
    assert_eq!(event.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("downsync-test-pod"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.as_deref().is_some_and(|n| n.contains("plugin stamp") && n.contains(&sha256(&v1))), "{event:?}");

    // Explain: the service rule keeps the downstream cluster's clusterIP.
    let up_ip = up_svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
    let down_ip = eventually("the Service downstream", Duration::from_secs(30), || async {
        let s = Api::<Service>::namespaced(env.downstream.clone(), &ns).get_opt("web").await?;
        Ok(s.and_then(|s| s.spec.and_then(|s| s.cluster_ip)))
    })
    .await?;
    assert_ne!(up_ip, down_ip, "each cluster allocated its own clusterIP");
    let addr = format!("http://{}", d.addr);
    let object = format!("{ns}/web");
    let (code, text, err) =
        run_to_end(&["explain", "Service", &object, "--addr", &addr, "--json"].map(OsString::from))?;
    assert!(code.success(), "{err}");
    let answer: Value = serde_json::from_str(&text)?;
    let field = answer["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["path"] == "/spec/clusterIP"))
        .ok_or_else(|| anyhow::anyhow!("/spec/clusterIP is not explained: {text}"))?;
    let by = field["by"].as_str().unwrap_or_default();
    assert!(by.starts_with("plugin service@") && by.ends_with(" preserve"), "{field}");
    assert_eq!(
        (field["upstream"].as_str(), field["downstream"].as_str()),
        (Some(up_ip.as_str()), Some(down_ip.as_str()))
    );
    let (code, text, _) = run_to_end(&["explain", "Service", &object, "--addr", &addr].map(OsString::from))?;
    assert!(code.success() && text.contains("/spec/clusterIP") && text.contains("kept the downstream value"), "{text}");
    let (code, _, err) =
        run_to_end(&["explain", "Service", &format!("{ns}/nope"), "--addr", &addr].map(OsString::from))?;
    assert!(!code.success() && err.contains("not found upstream"), "{err}");

    // A brand-new plugin that fails on every call has nothing to roll back to: /readyz says so
    // and the pod stays ready (its objects are held back; the rest syncs).
    std::fs::remove_file(plugins.join("stamp.wasm"))?;
    std::fs::write(plugins.join(".fresh.tmp"), &broken)?;
    std::fs::rename(plugins.join(".fresh.tmp"), plugins.join("fresh.wasm"))?;
    let body = eventually("/readyz to warn of the failing new plugin", Duration::from_secs(60), || async {
        let (code, body) = d.readyz()?;
        Ok(body.contains("has no earlier version to roll back to").then_some((code, body)))
    })
    .await?;
    assert_eq!(body.0, 200, "{}", body.1);
    assert!(body.1.starts_with("ok\nwarning: plugin stamp "), "{}", body.1);

    d.terminate()?;
    env.cleanup().await?;
    Ok(())
}

/// Every upstream namespace's ConfigMaps downstream carry `stamp`.
async fn every_namespace_stamped(
    client: &Client,
    namespaces: &[String],
    n: usize,
    stamp: &str,
) -> anyhow::Result<bool> {
    for ns in namespaces {
        if !all_stamped(client, ns, n, stamp).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[tokio::test]
async fn three_replicas_reach_one_rollout_verdict_decided_by_the_holder_of_shard_zero() -> anyhow::Result<()> {
    use downsync_tests::ha::{HaSetup, TEST_TIMING, create_namespaces, delete_namespaces, namespaces_over_shards};
    let env = TestEnv::new("run-rollout-ha").await?;
    let target = env.namespace.clone();
    let plugins = builtin_plugins_dir(&target)?;
    let v1 = stamp_version(&variant(1))?;
    install(&plugins, &v1)?;
    // A window of 20 calls: a rule change makes each replica call the shadow once per object of
    // its shard, 10 each, so no replica alone closes the window; all three together do.
    let config = write_config(&plugins, "plugins:\n  stamp:\n    rollout:\n      mode: shadow\n")?;
    let s = HaSetup {
        namespaces: namespaces_over_shards(&target, 3, 3),
        lease_namespace: target.clone(),
        target: target.clone(),
        shards: 3,
        timing: TEST_TIMING,
        extra: vec![
            "--plugins-dir".into(),
            plugins.display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--trial-window-calls".into(),
            "20".into(),
        ],
    };
    create_namespaces(&env.upstream, &s.namespaces).await?;
    for ns in &s.namespaces {
        create_configmaps(&env.upstream, ns, 10).await?;
    }
    let outcome = one_verdict(&env, &s, &plugins, &v1).await;
    delete_namespaces(&env.upstream, &s.namespaces).await?;
    delete_namespaces(&env.downstream, &s.namespaces).await?;
    outcome?;
    env.cleanup().await
}

async fn one_verdict(env: &TestEnv, s: &downsync_tests::ha::HaSetup, plugins: &Path, v1: &[u8]) -> anyhow::Result<()> {
    let replicas: Vec<Daemon> = (0..3).map(|n| s.start(n)).collect::<anyhow::Result<_>>()?;
    let named: Vec<(String, &Daemon)> = replicas.iter().enumerate().map(|(n, d)| (s.identity(n), d)).collect();
    let holders = downsync_tests::ha::wait_settled(s, &named).await?;
    let decider = holders.get(&0).cloned().unwrap_or_default();
    let one = variant(1);
    eventually("v1 stamps everywhere", Duration::from_secs(60), || async {
        Ok(every_namespace_stamped(&env.downstream, &s.namespaces, 10, &one).await?.then_some(()))
    })
    .await?;

    // A clean rebuild in shadow: promoted on every replica, decided once, from the calls of all.
    let clean = rebuilt(v1);
    let clean_digest = sha256(&clean);
    install(plugins, &clean)?;
    for (id, d) in &named {
        eventually(&format!("{id} to promote the clean version"), Duration::from_secs(90), || async {
            let st = d.plugin_status("stamp")?;
            let rollout = st["rollout"]["lastRollout"].as_str().unwrap_or_default().to_string();
            Ok(rollout.contains(&format!("version {clean_digest} promoted")).then_some(()))
        })
        .await?;
    }
    let decided = |d: &Daemon| d.log_text().matches("rollout decided for every replica").count();
    let followed = |d: &Daemon| d.log_text().matches("following the rollout decision").count();
    for (id, d) in &named {
        if *id == decider {
            assert!(decided(d) >= 1, "{id} holds shard 0 and decides:\n{}", d.log_text());
        } else {
            assert_eq!(decided(d), 0, "{id} does not hold shard 0 and never decides:\n{}", d.log_text());
            assert!(followed(d) >= 1, "{id} follows the decision:\n{}", d.log_text());
        }
    }

    // A version that traps in shadow: rolled back on every replica, by the same decider.
    install(plugins, &stamp_version(TRAP)?)?;
    let trap_digest = sha256(&stamp_version(TRAP)?);
    for (id, d) in &named {
        let rollout =
            eventually(&format!("{id} to roll the trapping shadow back"), Duration::from_secs(90), || async {
                let st = d.plugin_status("stamp")?;
                let rollout = st["rollout"]["lastRollout"].as_str().unwrap_or_default().to_string();
                Ok(rollout.contains(&format!("shadow version {trap_digest} rolled back")).then_some(rollout))
            })
            .await?;
        if *id != decider {
            assert!(rollout.contains(&format!("decided by {decider}")), "{id}: {rollout}");
        }
    }
    for (id, d) in &named {
        // The decider: the shadow's promotion, maybe the probation that followed, the rollback.
        let ok = if *id == decider { decided(d) >= 2 } else { decided(d) == 0 };
        assert!(ok, "{id}: only the holder of shard 0 ({decider}) decides:\n{}", d.log_text());
    }
    // The version in use stayed the clean one everywhere: the stamps never changed.
    assert!(every_namespace_stamped(&env.downstream, &s.namespaces, 10, &one).await?);
    drop(replicas);
    Ok(())
}
