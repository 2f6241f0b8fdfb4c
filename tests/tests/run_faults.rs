//! A misbehaving plugin and a permanent conflict, through `downsync run` between two real
//! control planes: a plugin that panics on some objects never stops the other objects or
//! later changes from syncing, and once it is removed every object syncs; a plugin that burns
//! its whole deadline on every call leaves `/healthz` and other kinds working; a name taken by
//! an object downsync does not own is reported once, not on every retry.

use std::time::Duration;

use downsync_tests::daemon::Daemon;
use downsync_tests::objects::{create_all, mk_configmap};
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Upstream ConfigMaps whose downstream copy carries `data.v == want`.
async fn synced_with(down: &Client, ns: &str, names: &[String], want: &str) -> anyhow::Result<usize> {
    let api: Api<ConfigMap> = Api::namespaced(down.clone(), ns);
    let mut n = 0;
    for name in names {
        if let Some(cm) = api.get_opt(name).await?
            && cm.data.as_ref().and_then(|d| d.get("v")).map(String::as_str) == Some(want)
        {
            n += 1;
        }
    }
    Ok(n)
}

async fn set_v(up: &Client, ns: &str, names: &[String], v: &str) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(up.clone(), ns);
    for name in names {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&json!({"data": {"v": v}}))).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_panicking_plugin_never_stops_the_syncer_and_its_removal_heals_everything() -> anyhow::Result<()> {
    let env = TestEnv::new("run-panic").await?;
    let ns = env.namespace.clone();
    let names: Vec<String> = (0..40).map(|i| format!("cm-{i:02}")).collect();
    let objects = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut cm = mk_configmap(&ns, name, json!({"v": "0"}));
            if i % 4 == 0 {
                // The faulty test plugin panics (a guest `panic!`, which writes to stderr) on these.
                cm["metadata"]["annotations"] = json!({"downsync.dev/fault": "trap"});
            }
            cm
        })
        .collect();
    create_all(&env.upstream, &ns, objects).await?;
    let trapping: Vec<String> = names.iter().step_by(4).cloned().collect();
    let healthy: Vec<String> = names.iter().enumerate().filter(|(i, _)| i % 4 != 0).map(|(_, n)| n.clone()).collect();

    let plugins = std::env::temp_dir().join(format!("downsync-panic-plugins-{ns}"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(plugin_path("downsync-plugin-testing-faulty")?, plugins.join("faulty.wasm"))?;
    let args: Vec<String> = ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns, "--workers", "8"]
        .iter()
        .map(|s| (*s).to_string())
        .chain(["--plugins-dir".to_string(), plugins.display().to_string()])
        .collect();
    let mut d = Daemon::start("panic", &args)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    assert_eq!(synced_with(&env.downstream, &ns, &healthy, "0").await?, 30, "log: {}", d.log.display());

    // Three rounds of upstream changes while the plugin keeps panicking on a quarter of them.
    for round in ["1", "2", "3"] {
        set_v(&env.upstream, &ns, &names, round).await?;
        eventually("every healthy object to follow the change", Duration::from_secs(30), || async {
            Ok((synced_with(&env.downstream, &ns, &healthy, round).await? == 30).then_some(()))
        })
        .await?;
        assert_eq!(d.healthz()?.0, 200, "the workers all run");
    }
    assert_eq!(synced_with(&env.downstream, &ns, &trapping, "3").await?, 0, "fail-closed: never written");

    // One place says which plugin fails, how, and on what; /readyz?verbose names it too.
    let (code, body) = d.get_path("/plugins")?;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    let faulty = status["plugins"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == "faulty")).cloned();
    let faulty = faulty.ok_or_else(|| anyhow::anyhow!("faulty is not on /plugins: {body}"))?;
    assert!(faulty["digest"].as_str().is_some_and(|d| d.len() == 64), "{faulty}");
    assert_eq!(faulty["wit"], "0.2.0", "{faulty}");
    assert!(faulty["errors"]["trap"].as_u64().is_some_and(|n| n >= 10), "{faulty}");
    assert!(faulty["calls"]["transform"].as_u64().is_some_and(|n| n >= 40), "{faulty}");
    let last = &faulty["lastError"];
    assert_eq!(last["failure"], "trap", "{faulty}");
    assert!(
        last["message"].as_str().is_some_and(|m| m.contains("ConfigMap") && m.contains("asked to trap")),
        "{faulty}"
    );
    let (code, verbose) = d.get_path("/readyz?verbose")?;
    assert_eq!(code, 200, "a plugin failing at run time does not make the pod unready: {verbose}");
    assert!(verbose.contains("plugin faulty fails at run time (trap "), "{verbose}");

    // The plugin goes: every object syncs, and later changes too.
    std::fs::remove_file(plugins.join("faulty.wasm"))?;
    eventually("the objects the plugin refused to sync once it is gone", Duration::from_secs(30), || async {
        Ok((synced_with(&env.downstream, &ns, &names, "3").await? == 40).then_some(()))
    })
    .await?;
    set_v(&env.upstream, &ns, &names, "4").await?;
    eventually("every later change to sync", Duration::from_secs(30), || async {
        Ok((synced_with(&env.downstream, &ns, &names, "4").await? == 40).then_some(()))
    })
    .await?;
    assert_eq!(d.metric("downsync_worker_panics_total", &[])?, 0.0, "log: {}", d.log.display());
    // A host panic prints `thread '…' panicked at …` as a raw line; the guest's own panic
    // message is only ever inside a log record, escaped.
    let raw_panics = d.log_text().lines().filter(|l| l.starts_with("thread '")).count();
    assert_eq!(raw_panics, 0, "no host panic; log: {}", d.log.display());
    assert!(d.log_text().contains("faulty plugin asked to trap"), "the guest's panic message is logged");
    // The start names each call's budgets: the memory cap is derived from the memory downsync
    // may use and the workers (half of it shared by 8 here), between 64 MiB and 1 GiB.
    let log = d.log_text();
    let budget = log.lines().find(|l| l.contains("each rule call gets")).unwrap_or_default();
    let mib = budget.split("memory_mib=").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok());
    assert!(mib.is_some_and(|m| (64..=1024).contains(&m)), "the memory cap at start: {budget:?}");
    assert!(budget.contains("workers=8") && budget.contains("fuel=200000000"), "{budget:?}");
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn a_permanent_name_conflict_is_reported_once() -> anyhow::Result<()> {
    let env = TestEnv::new("run-conflict-once").await?;
    let ns = env.namespace.clone();
    let squatter: ConfigMap = serde_json::from_value(mk_configmap(&ns, "taken", json!({"owner": "someone"})))?;
    Api::<ConfigMap>::namespaced(env.downstream.clone(), &ns).create(&PostParams::default(), &squatter).await?;
    create_all(&env.upstream, &ns, vec![mk_configmap(&ns, "taken", json!({"owner": "upstream"}))]).await?;
    let args: Vec<String> =
        ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns, "--feature-gates", "Sharding=false"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
    let mut d = Daemon::start("conflict-once", &args)?;
    d.wait_ready(Duration::from_secs(60)).await?;
    // Retries go on with backoff (about ten in this time); the report does not repeat.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let retries = d.metric("downsync_retries_total", &[])?;
    assert!(retries >= 3.0, "it keeps trying: {retries}; log: {}", d.log.display());
    let log = d.log_text();
    let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains("taken")).count();
    assert_eq!(warnings, 1, "one warning per change of state; log: {}", d.log.display());
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
    assert_eq!(d.metric("downsync_feature_enabled", &[r#"name="Sharding""#])?, 0.0);
    assert_eq!(d.metric("downsync_feature_enabled", &[r#"name="ClientIntent""#])?, 1.0);
    assert!(d.terminate()?.success());
    env.cleanup().await
}

#[tokio::test]
async fn a_plugin_that_burns_its_deadline_leaves_healthz_and_other_kinds_working() -> anyhow::Result<()> {
    let env = TestEnv::new("run-deadline").await?;
    let ns = env.namespace.clone();
    // Twelve ConfigMaps on which the faulty plugin spins until the wall-clock deadline stops it
    // (fuel is set so high that the deadline, not the fuel, ends each call).
    let objects: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            let mut cm = mk_configmap(&ns, &format!("spin-{i:02}"), json!({"v": "0"}));
            cm["metadata"]["annotations"] = json!({"downsync.dev/fault": "loop"});
            cm
        })
        .collect();
    create_all(&env.upstream, &ns, objects).await?;
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "other", "namespace": ns}, "stringData": {"v": "0"}}))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.upstream.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;

    let plugins = std::env::temp_dir().join(format!("downsync-deadline-plugins-{ns}"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(plugin_path("downsync-plugin-testing-faulty")?, plugins.join("faulty.wasm"))?;
    let config = std::env::temp_dir().join(format!("downsync-deadline-{ns}.yaml"));
    std::fs::write(&config, "engine: {fuel: 1000000000000}\n")?;
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--resource",
        "v1/ConfigMap",
        "--resource",
        "v1/Secret",
        "--namespace",
        &ns,
        "--target",
        &ns,
        "--workers",
        "4",
        "--plugins-dir",
        &plugins.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let mut d = Daemon::start("deadline", &args)?;
    d.wait_ready(Duration::from_secs(90)).await?;

    // While the spinning objects keep their share of the workers (3 of 4: a kind's share of
    // the workers) busy a second at a time, the Secret follows its upstream changes and /healthz
    // answers. The ConfigMaps never hold the last worker.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.downstream.clone(), &ns);
    let busy = || d.metric("downsync_workers_busy", &[r#"kind="ConfigMap""#]);
    let most_busy = std::cell::Cell::new(0.0_f64);
    for round in ["1", "2", "3"] {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.upstream.clone(), &ns)
            .patch("other", &PatchParams::default(), &Patch::Merge(&json!({"stringData": {"v": round}})))
            .await?;
        eventually("the Secret to follow while the plugin spins", Duration::from_secs(60), || async {
            assert_eq!(d.healthz()?.0, 200, "healthz answers while calls burn their deadline");
            let now = busy()?;
            assert!(now <= 3.0, "the spinning kind holds {now} of the 4 workers; its share is 3");
            most_busy.set(most_busy.get().max(now));
            let got = secrets.get_opt("other").await?.and_then(|s| s.data).and_then(|m| m.get("v").cloned());
            Ok((got.map(|b| b.0) == Some(round.as_bytes().to_vec())).then_some(()))
        })
        .await?;
    }
    eventually("the spinning kind to fill its share of the workers", Duration::from_secs(30), || async {
        let now = busy()?;
        assert!(now <= 3.0, "the spinning kind holds {now} of the 4 workers; its share is 3");
        most_busy.set(most_busy.get().max(now));
        Ok((most_busy.get() >= 3.0).then_some(()))
    })
    .await?;
    let deadlines = d.metric("downsync_plugin_errors_total", &[r#"plugin="faulty""#, r#"failure="deadline""#])?;
    assert!(deadlines >= 12.0, "the calls did burn their deadline: {deadlines}; log: {}", d.log.display());
    assert!(d.terminate()?.success());
    let _ = std::fs::remove_file(&config);
    env.cleanup().await
}

#[tokio::test]
async fn a_rule_failing_for_another_cause_gets_an_event_saying_so() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Event;
    use kube::api::ListParams;

    let env = TestEnv::new("run-rule-event").await?;
    let ns = env.namespace.clone();
    let mut cm = mk_configmap(&ns, "flaky", json!({"v": "0"}));
    cm["metadata"]["annotations"] = json!({"downsync.dev/fault": "trap"});
    create_all(&env.upstream, &ns, vec![cm]).await?;
    let plugins = std::env::temp_dir().join(format!("downsync-rule-event-plugins-{ns}"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(plugin_path("downsync-plugin-testing-faulty")?, plugins.join("faulty.wasm"))?;
    let args: Vec<String> = ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns]
        .iter()
        .map(|s| (*s).to_string())
        .chain(["--plugins-dir".to_string(), plugins.display().to_string()])
        .collect();
    let mut d = Daemon::start("rule-event", &args)?;
    d.wait_ready(Duration::from_secs(90)).await?;

    let events: Api<Event> = Api::namespaced(env.upstream.clone(), &ns);
    let rule_failed = |needle: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("RuleFailed")
                    && e.involved_object.name.as_deref() == Some("flaky")
                    && e.message.as_deref().is_some_and(|m| m.contains(needle))
            }))
        }
    };
    eventually("a RuleFailed event naming the trap", Duration::from_secs(30), || rule_failed("trap")).await?;

    // The same rule now fails for another cause: the event says that cause, not the first.
    let patch = json!({"metadata": {"annotations": {"downsync.dev/fault": "bad-json"}}});
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns)
        .patch("flaky", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let later = eventually("a RuleFailed event naming the new cause", Duration::from_secs(30), || {
        rule_failed("not valid JSON")
    })
    .await?;
    assert!(!later.message.unwrap_or_default().contains("trap"), "the new cause alone");
    assert!(d.terminate()?.success());
    let _ = std::fs::remove_dir_all(&plugins);
    env.cleanup().await
}
