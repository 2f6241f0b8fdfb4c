//! `downsync run` across its life: a restart writes only what changed while it was down, a SIGKILL mid-sync still
//! converges, orphans go only after the grace period, the upstream finalizer and status
//! upsync, `--once`, `diff`, hot plugin swaps and readiness, and bad input.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use downsync_tests::daemon::{Daemon, builtin_plugins_dir, cluster_args, free_port, run_to_end};
use downsync_tests::objects::{
    converged, create_all, mk_configmap, mk_deployment, mk_mix, owned, resource_args, resource_versions,
};
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, clusters, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn args(ns: &str, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    args_with(ns, &builtin_plugins_dir(ns)?, extra)
}

/// `run` for the test's namespace (also its target), with a plugins folder and more flags.
fn args_with(ns: &str, plugins: &std::path::Path, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut a: Vec<String> = resource_args().into_iter().map(String::from).collect();
    a.extend(["--namespace", ns, "--target", ns].map(String::from));
    a.extend(["--plugins-dir".to_string(), plugins.display().to_string()]);
    a.extend(extra.iter().map(|s| (*s).to_string()));
    Ok(a)
}

#[tokio::test]
async fn a_restart_over_synced_objects_writes_only_what_changed_while_it_was_down() -> anyhow::Result<()> {
    let env = TestEnv::new("run-restart").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, mk_mix(&ns, 300)).await?;
    let a = args(&ns, &[])?;
    let mut first = Daemon::start("restart-1", &a)?;
    first.wait_ready(Duration::from_secs(120)).await?;
    let first_log = first.log.clone();
    assert!(first.terminate()?.success(), "SIGTERM exits 0");
    let saved = std::fs::read_to_string(&first_log)?.contains("saved the state for the next run");
    assert!(saved, "log: {}", first_log.display());
    // While downsync is down, someone edits one copy.
    let copies: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let edit = json!({"data": {"index": "edited while downsync was down"}});
    copies.patch("obj-00002", &PatchParams::default(), &Patch::Merge(&edit)).await?;
    let mut before = resource_versions(&env.downstream, &ns).await?;
    assert_eq!(before.len(), 300);

    let mut second = Daemon::start("restart-2", &a)?;
    second.wait_ready(Duration::from_secs(120)).await?;
    assert!(
        second.log_text().contains("kept the state of the last run"),
        "the second run starts from the first one's state; log: {}",
        second.log.display()
    );
    eventually("the edit made while down to be reverted", Duration::from_secs(30), || async {
        let cm = copies.get("obj-00002").await?;
        Ok((cm.data.as_ref().and_then(|d| d.get("index")).map(String::as_str) == Some("2")).then_some(()))
    })
    .await?;
    // Give any late write the chance to land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut after = resource_versions(&env.downstream, &ns).await?;
    let edited = ("ConfigMap".to_string(), "obj-00002".to_string());
    assert_ne!(before.remove(&edited), after.remove(&edited), "the edited copy is written back");
    assert_eq!(before, after, "a downstream object changed its resourceVersion: something else was written");
    let writes = ["created", "updated", "recreated", "deleted"]
        .iter()
        .map(|op| second.metric("downsync_syncs_total", &[&format!("operation=\"{op}\"")]))
        .sum::<anyhow::Result<f64>>()?;
    assert_eq!(writes, 1.0, "one write: the edited copy");
    assert!(second.metric("downsync_syncs_total", &[r#"operation="unchanged""#])? >= 299.0);
    assert!(second.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn killed_mid_sync_and_restarted_it_converges_with_nothing_lost_or_doubled() -> anyhow::Result<()> {
    let env = TestEnv::new("run-kill").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, mk_mix(&ns, 600)).await?;
    let a = args(&ns, &["--workers", "2"])?;
    let first = Daemon::start("kill-1", &a)?;
    eventually("the first copies to appear", Duration::from_secs(60), || async {
        Ok((owned(&env.downstream, &ns, &ns).await?.len() >= 50).then_some(()))
    })
    .await?;
    first.kill()?;
    let mid = owned(&env.downstream, &ns, &ns).await?.len();

    let mut second = Daemon::start("kill-2", &a)?;
    second.wait_ready(Duration::from_secs(120)).await?;
    assert!(
        converged(&env.upstream, &env.downstream, &ns, &ns).await?,
        "after the restart downstream holds exactly the upstream objects (killed at {mid}/600)"
    );
    assert_eq!(second.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0, "log: {}", second.log.display());
    assert!(second.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn orphans_found_at_startup_go_after_the_grace_period_and_unowned_objects_never() -> anyhow::Result<()> {
    let env = TestEnv::new("run-orphans").await?;
    let ns = env.namespace.clone();
    create_all(
        &env.upstream,
        &ns,
        vec![mk_configmap(&ns, "stays", json!({"k": "1"})), mk_configmap(&ns, "goes", json!({"k": "2"}))],
    )
    .await?;
    let grace = 4;
    let a = args(&ns, &["--orphan-grace-seconds", &grace.to_string()])?;
    let mut first = Daemon::start("orphans-1", &a)?;
    first.wait_ready(Duration::from_secs(60)).await?;
    assert!(first.terminate()?.success());

    // While downsync is down: one upstream object goes, and someone else creates a ConfigMap.
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns).delete("goes", &DeleteParams::default()).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    down.create(&PostParams::default(), &serde_json::from_value(mk_configmap(&ns, "bystander", json!({})))?).await?;

    let started = Instant::now();
    let mut second = Daemon::start("orphans-2", &a)?;
    second.wait_ready(Duration::from_secs(60)).await?;
    eventually("the orphan to be deleted", Duration::from_secs(60), || async {
        Ok(down.get_opt("goes").await?.is_none().then_some(()))
    })
    .await?;
    assert!(started.elapsed() >= Duration::from_secs(grace), "deleted before the grace period ended");
    assert!(down.get_opt("stays").await?.is_some());
    assert!(down.get_opt("bystander").await?.is_some(), "an unowned object is never swept");
    assert!(second.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn the_upstream_finalizer_holds_deletes_until_the_copy_is_gone_and_is_released_when_deselected()
-> anyhow::Result<()> {
    let env = TestEnv::new("run-finalizer").await?;
    let ns = env.namespace.clone();
    let mut selected = mk_configmap(&ns, "held", json!({"k": "1"}));
    selected["metadata"]["labels"]["sync"] = json!("yes");
    let mut other = mk_configmap(&ns, "deselected", json!({"k": "2"}));
    other["metadata"]["labels"]["sync"] = json!("yes");
    create_all(&env.upstream, &ns, vec![selected, other]).await?;
    let plugins = builtin_plugins_dir(&format!("{ns}-f"))?;
    let a: Vec<String> = [
        "--resource",
        "v1/ConfigMap",
        "--selector",
        "sync=yes",
        "--namespace",
        &ns,
        "--target",
        &ns,
        "--upstream-finalizer",
        "--plugins-dir",
        &plugins.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut d = Daemon::start("finalizer", &a)?;
    d.wait_ready(Duration::from_secs(60)).await?;

    let up: Api<ConfigMap> = Api::namespaced(env.upstream.clone(), &ns);
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let has_finalizer = |cm: &ConfigMap| cm.metadata.finalizers.iter().flatten().any(|f| f == "downsync.dev/syncer");
    eventually("the finalizer upstream", Duration::from_secs(30), || async {
        Ok(has_finalizer(&up.get("held").await?).then_some(()))
    })
    .await?;
    assert!(down.get_opt("held").await?.is_some());

    up.delete("held", &DeleteParams::default()).await?;
    eventually("the copy, then the upstream object, to go", Duration::from_secs(30), || async {
        let gone = down.get_opt("held").await?.is_none() && up.get_opt("held").await?.is_none();
        Ok(gone.then_some(()))
    })
    .await?;

    // No longer selected: the copy goes and the finalizer is released; the object stays.
    up.patch("deselected", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sync": "no"}}})))
        .await?;
    let released = eventually("the deselected object to be released", Duration::from_secs(30), || async {
        let cm = up.get("deselected").await?;
        Ok((!has_finalizer(&cm) && down.get_opt("deselected").await?.is_none()).then_some(cm))
    })
    .await?;
    assert!(released.metadata.deletion_timestamp.is_none());
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn downstream_status_is_copied_to_the_upstream_object() -> anyhow::Result<()> {
    let env = TestEnv::new("run-status").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, vec![mk_deployment(&ns, "web", "nginx:1.27", 2)]).await?;
    let mut d = Daemon::start("status", &args(&ns, &["--status-upsync"])?)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // No deployment controller runs here; play its part downstream.
    let down: Api<Deployment> = Api::namespaced(env.downstream.clone(), &ns);
    down.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2}})),
    )
    .await?;
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    eventually("the status upstream", Duration::from_secs(30), || async {
        let ready = up.get("web").await?.status.and_then(|s| s.ready_replicas);
        Ok((ready == Some(2)).then_some(()))
    })
    .await?;
    assert!(d.terminate()?.success());
    env.cleanup().await
}

fn os(args: Vec<String>) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

#[tokio::test]
async fn once_syncs_and_exits_zero_and_diff_shows_changes_without_writing() -> anyhow::Result<()> {
    let env = TestEnv::new("run-once-diff").await?;
    let ns = env.namespace.clone();
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "cfg", json!({"level": "info"}))]).await?;
    let mut once: Vec<OsString> = vec!["run".into(), "--once".into(), "--metrics-addr".into(), "off".into()];
    once.extend(cluster_args()?);
    once.extend(os(args(&ns, &[])?));
    let (status, _, stderr) = run_to_end(&once)?;
    assert!(status.success(), "run --once failed: {stderr}");
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let synced = down.get("cfg").await?;

    let up: Api<ConfigMap> = Api::namespaced(env.upstream.clone(), &ns);
    up.patch("cfg", &PatchParams::default(), &Patch::Merge(json!({"data": {"level": "debug"}}))).await?;
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "new", json!({"x": "y"}))]).await?;
    let mut diff: Vec<OsString> = vec!["diff".into()];
    diff.extend(cluster_args()?);
    diff.extend(os(args(&ns, &[])?));
    let (status, stdout, stderr) = run_to_end(&diff)?;
    assert!(status.success(), "diff failed: {stderr}");
    assert!(stdout.contains(&format!("~ ConfigMap {ns}/cfg (update)")), "{stdout}");
    assert!(stdout.contains("-  level: info") && stdout.contains("+  level: debug"), "{stdout}");
    assert!(stdout.contains(&format!("+ ConfigMap {ns}/new (create)")), "{stdout}");
    assert!(stdout.contains("1 to create, 1 to update"), "{stdout}");
    assert_eq!(down.get("cfg").await?.metadata.resource_version, synced.metadata.resource_version, "diff wrote");
    assert!(down.get_opt("new").await?.is_none(), "diff created an object");
    env.cleanup().await
}

#[tokio::test]
async fn a_plugin_dropped_in_applies_without_a_restart_and_a_broken_one_keeps_readyz_red() -> anyhow::Result<()> {
    let env = TestEnv::new("run-hot-swap").await?;
    let ns = env.namespace.clone();
    create_all(
        &env.upstream,
        &ns,
        vec![mk_configmap(&ns, "cfg", json!({"k": "v"})), mk_deployment(&ns, "web", "nginx:1.27", 1)],
    )
    .await?;
    let plugins = builtin_plugins_dir(&format!("{ns}-h"))?;
    let mut d = Daemon::start("hot-swap", &args_with(&ns, &plugins, &[])?)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let down: Api<ConfigMap> = Api::namespaced(env.downstream.clone(), &ns);
    let stamped = |cm: &ConfigMap| {
        cm.metadata.annotations.as_ref().and_then(|a| a.get("downsync.dev/minimal")).map(String::as_str) == Some("seen")
    };
    assert!(!stamped(&down.get("cfg").await?));
    let deployments: Api<Deployment> = Api::namespaced(env.downstream.clone(), &ns);
    let web_before = deployments.get("web").await?.metadata.resource_version;

    // A component that is not one: readiness names it, the syncing goes on.
    std::fs::write(plugins.join("broken.wasm"), b"not a component")?;
    let why = eventually("readyz to report the broken plugin", Duration::from_secs(30), || async {
        let (code, body) = d.readyz()?;
        Ok((code == 503 && body.contains("broken.wasm")).then_some(body))
    })
    .await?;
    assert!(why.contains("never loaded"), "{why}");

    // The same file name now holds a working plugin: it loads, applies to every object, and
    // readiness comes back.
    let tmp = plugins.join(".broken.wasm.tmp");
    std::fs::copy(plugin_path("downsync-plugin-minimal")?, &tmp)?;
    std::fs::rename(&tmp, plugins.join("broken.wasm"))?;
    eventually("the new plugin's behaviour downstream", Duration::from_secs(30), || async {
        Ok(stamped(&down.get("cfg").await?).then_some(()))
    })
    .await?;
    d.wait_ready(Duration::from_secs(30)).await?;
    assert_eq!(
        deployments.get("web").await?.metadata.resource_version,
        web_before,
        "a ConfigMap rule swap must not rewrite Deployments"
    );
    assert_eq!(d.metric("downsync_syncs_total", &[r#"result="error""#])?, 0.0);
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn bad_input_gets_an_error_that_names_the_setting() -> anyhow::Result<()> {
    let clusters = clusters()?;
    let run = |extra: &[&str]| -> anyhow::Result<String> {
        let mut a: Vec<OsString> = vec!["run".into(), "--metrics-addr".into(), "off".into()];
        a.extend(cluster_args()?);
        a.extend(extra.iter().map(OsString::from));
        let (status, _, stderr) = run_to_end(&a)?;
        assert!(!status.success(), "{extra:?} should fail");
        Ok(stderr)
    };
    let err = run(&[])?;
    assert!(err.contains("resources") && err.contains("--resource"), "{err}");
    let err = run(&["--resource", "v1/NoSuchKind"])?;
    assert!(err.contains("resources[0]") && err.contains("NoSuchKind") && err.contains("not served"), "{err}");
    let err = run(&["--resource", "ConfigMap"])?;
    assert!(err.contains("API_VERSION/KIND"), "{err}");

    // An upstream kubeconfig that points at nothing.
    let text = std::fs::read_to_string(&clusters.upstream.kubeconfig)?;
    let port = free_port()?;
    let dead = regex_free_replace_server(&text, port);
    let path = std::env::temp_dir().join(format!("downsync-dead-{}-{port}.kubeconfig", std::process::id()));
    std::fs::write(&path, dead)?;
    let a: Vec<OsString> = vec![
        "run".into(),
        "--metrics-addr".into(),
        "off".into(),
        "--upstream-kubeconfig".into(),
        path.clone().into(),
        "--downstream-kubeconfig".into(),
        clusters.downstream.kubeconfig.clone().into(),
        "--resource".into(),
        "v1/ConfigMap".into(),
    ];
    let (status, _, err) = run_to_end(&a)?;
    assert!(!status.success());
    assert!(
        err.contains("upstream cluster") && err.contains("unreachable") && err.contains(&port.to_string()),
        "{err}"
    );
    Ok(())
}

/// The kubeconfig with its `server:` URL pointed at a port nobody listens on.
fn regex_free_replace_server(kubeconfig: &str, port: u16) -> String {
    kubeconfig
        .lines()
        .map(|l| match l.split_once("server:") {
            Some((indent, _)) => format!("{indent}server: https://127.0.0.1:{port}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
