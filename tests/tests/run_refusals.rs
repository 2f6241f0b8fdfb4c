//! Settings that would make `downsync run` do harm are refused at start, naming the setting:
//! a metrics address already in use, a misspelt nested setting, upstream and downstream being
//! the same cluster onto the same names (by URL or through another URL), an unknown feature
//! gate and an absurd worker count; a removed setting, with what replaced it. Into other
//! namespaces, one cluster syncs into itself.

use std::ffi::OsString;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use downsync_tests::clusters;
use downsync_tests::daemon::{downsync_bin, run_to_end, run_to_end_with_env};

fn arg(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// Runs `downsync run` with these arguments, expecting it to fail; returns its stderr.
fn refused(args: Vec<OsString>) -> anyhow::Result<String> {
    downsync_bin()?;
    let started = Instant::now();
    // A backtrace is for the program's bugs, not the user's settings, even when asked for.
    let (status, _, stderr) = run_to_end_with_env(&args, &[("RUST_BACKTRACE", "1")])?;
    assert!(!status.success(), "{args:?} should be refused:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "refused at start, not after a run");
    assert!(!stderr.contains("stack backtrace") && !stderr.contains("Stack backtrace"), "no backtrace:\n{stderr}");
    assert!(stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 3, "a short error:\n{stderr}");
    Ok(stderr)
}

/// `run` from `upstream` into the test downstream, for a namespace nothing lives in.
fn run_from(upstream: &std::path::Path) -> anyhow::Result<Vec<OsString>> {
    Ok(vec![
        arg("run"),
        arg("--upstream-kubeconfig"),
        arg(upstream),
        arg("--downstream-kubeconfig"),
        arg(&clusters()?.downstream.kubeconfig),
        arg("--resource"),
        arg("v1/ConfigMap"),
        arg("--namespace"),
        arg("refusals-nothing-here"),
    ])
}

fn base() -> anyhow::Result<Vec<OsString>> {
    run_from(&clusters()?.upstream.kubeconfig)
}

#[test]
fn a_metrics_address_in_use_stops_the_start_naming_it() -> anyhow::Result<()> {
    let holder = TcpListener::bind("127.0.0.1:0")?;
    let addr = holder.local_addr()?;
    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg(addr.to_string())]);
    let err = refused(a)?;
    assert!(err.contains(&format!("metricsAddr {addr}")) && err.contains("cannot listen"), "{err}");
    Ok(())
}

#[test]
fn a_misspelt_nested_setting_is_refused_with_its_path() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("downsync-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, yaml, want) in [
        ("upstream", "upstream: {kubeconfg: /nowhere}\n", ["upstream", "kubeconfg"]),
        ("ownership", "sync: {ownership: {targte: shard-b}}\n", ["sync.ownership", "targte"]),
    ] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        let mut a = base()?;
        a.extend([arg("--metrics-addr"), arg("off"), arg("--config"), arg(&file)]);
        let err = refused(a)?;
        assert!(want.iter().all(|w| err.contains(w)), "{yaml}: {err}");
    }
    Ok(())
}

#[test]
fn one_cluster_as_both_sides_is_refused_onto_the_same_names() -> anyhow::Result<()> {
    let c = clusters()?;
    let same = |upstream: &std::path::Path| -> anyhow::Result<(bool, String)> {
        let mut a = run_from(upstream)?;
        a.extend([arg("--metrics-addr"), arg("off"), arg("--once")]);
        let (status, _, stderr) = run_to_end(&a)?;
        Ok((status.success(), stderr))
    };
    let (ok, err) = same(&c.downstream.kubeconfig)?;
    assert!(!ok && err.contains("same cluster") && err.contains("--namespace-prefix"), "{err}");

    // The same server under another name: caught by the cluster's identity, not the URL.
    let text = std::fs::read_to_string(&c.downstream.kubeconfig)?;
    assert!(text.contains("https://127.0.0.1:"), "the test clusters serve on 127.0.0.1");
    let other_name = std::env::temp_dir().join(format!("downsync-localhost-{}.kubeconfig", std::process::id()));
    std::fs::write(&other_name, text.replace("https://127.0.0.1:", "https://localhost:"))?;
    let (ok, err) = same(&other_name)?;
    assert!(!ok && err.contains("same cluster") && err.contains("kube-system"), "{err}");
    Ok(())
}

#[tokio::test]
async fn one_cluster_syncs_into_other_namespaces_of_itself_and_never_copies_its_copies() -> anyhow::Result<()> {
    use downsync_tests::TestEnv;
    use downsync_tests::objects::{create_all, mk_configmap};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::Api;
    let env = TestEnv::new("same-cluster").await?;
    let ns = env.namespace.clone();
    create_all(&env.downstream, &ns, vec![mk_configmap(&ns, "app", serde_json::json!({"k": "v"}))]).await?;
    let prefix = "copy-";
    let (copy_ns, copy_of_copy) = (format!("{prefix}{ns}"), format!("{prefix}{prefix}{ns}"));
    let down = clusters()?.downstream.kubeconfig;
    let run = || -> anyhow::Result<()> {
        let mut a = vec![arg("run"), arg("--upstream-kubeconfig"), arg(&down), arg("--downstream-kubeconfig")];
        a.extend([arg(&down), arg("--resource"), arg("v1/ConfigMap"), arg("--namespace"), arg(&ns)]);
        a.extend([arg("--namespace"), arg(&copy_ns), arg("--namespace-prefix"), arg(prefix)]);
        a.extend([arg("--target"), arg(&ns), arg("--metrics-addr"), arg("off"), arg("--once")]);
        let (status, _, stderr) = run_to_end(&a)?;
        assert!(status.success(), "into other namespaces one cluster is its own downstream:\n{stderr}");
        Ok(())
    };
    run()?;
    let copy = Api::<ConfigMap>::namespaced(env.downstream.clone(), &copy_ns).get("app").await?;
    assert_eq!(copy.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("v"));
    // The copy is in a selected namespace now: a second run sees it upstream, and leaves it.
    run()?;
    let namespaces = Api::<Namespace>::all(env.downstream.clone());
    assert!(namespaces.get_opt(&copy_of_copy).await?.is_none(), "downsync never copies what it wrote");
    let _ = namespaces.delete(&copy_ns, &Default::default()).await;
    env.cleanup().await
}

#[test]
fn bad_flags_are_refused_naming_the_flag() -> anyhow::Result<()> {
    for (flag, value, want) in [
        ("--feature-gates", "Sharding=true,Teleport=true", ["--feature-gates", "Teleport", "ClientIntent"]),
        ("--workers", "18446744073709551615", ["workers", "out of range", "256"]),
    ] {
        let mut a = base()?;
        a.extend([arg("--metrics-addr"), arg("off"), arg(flag), arg(value)]);
        let err = refused(a)?;
        assert!(want.iter().all(|w| err.contains(w)), "{flag} {value}: {err}");
    }
    Ok(())
}

#[test]
fn periods_of_2_to_the_64_are_refused_naming_the_setting_and_its_range() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("downsync-refusals-periods-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("check.yaml");
    std::fs::write(&file, "registry: {checkSeconds: 18446744073709551615}\n")?;
    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg("off"), arg("--config"), arg(&file)]);
    let err = refused(a)?;
    assert!(err.contains("registry.checkSeconds") && err.contains("give 1 to 31536000"), "{err}");

    // A period that is no longer a setting is refused with what took its place.
    let file = dir.join("resync.yaml");
    std::fs::write(&file, "resyncSeconds: 60\n")?;
    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg("off"), arg("--config"), arg(&file)]);
    let err = refused(a)?;
    assert!(err.contains("resyncSeconds") && err.contains("10 minutes"), "{err}");

    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg("off"), arg("--orphan-grace-seconds"), arg("18446744073709551615")]);
    let err = refused(a)?;
    assert!(err.contains("--orphan-grace-seconds") && err.contains("give 0 to 31536000"), "{err}");
    Ok(())
}

#[test]
fn config_type_errors_say_what_to_write_and_metrics_addr_off_is_taken() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("downsync-refusals-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("workers.yaml");
    std::fs::write(&file, "workers: many\n")?;
    let mut a = base()?;
    a.extend([arg("--config"), arg(&file)]);
    let err = refused(a)?;
    assert!(err.contains("workers") && err.contains("expected a whole number, 0 or more"), "{err}");
    assert!(!err.contains("usize"), "no Rust types: {err}");

    // `metricsAddr: off` in the file as `--metrics-addr off` on the command line: the run
    // gets past it (and stops at the worker count, a later check).
    std::fs::write(&file, "metricsAddr: off\nworkers: 100000\n")?;
    let mut a = base()?;
    a.extend([arg("--config"), arg(&file)]);
    let err = refused(a)?;
    assert!(!err.contains("metricsAddr") && err.contains("workers") && err.contains("out of range"), "{err}");
    Ok(())
}

/// A setting issue 29 removed is refused at start, naming it and what replaced it, also inside
/// the deploy examples' ConfigMap form; its flag is gone too.
#[test]
fn a_removed_setting_is_refused_naming_what_replaced_it() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("downsync-refusals-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("gone.yaml");
    for (yaml, said) in [
        ("ha: {enabled: true}\n", "`ha.enabled` is gone: HA is on when `ha` is given"),
        (
            "resources:\n- {apiVersion: apps/v1, kind: Deployment, drift: {keep: [hpa]}}\n",
            "`resources[0].drift.keep` is gone: managers are named in one map now",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\ndata:\n  config.yaml: |\n    plugins: {stamp: {rollout: {shadow: true}}}\n",
            "`plugins.stamp.rollout.shadow` is gone: write `rollout: {mode: shadow}`",
        ),
    ] {
        std::fs::write(&file, yaml)?;
        let mut a = base()?;
        a.extend([arg("--config"), arg(&file)]);
        let err = refused(a)?;
        assert!(err.contains(said), "{yaml}: {err}");
    }
    let mut a = base()?;
    a.extend([arg("--metrics-cert-dir"), arg(&dir)]);
    let (status, _, err) = run_to_end(&a)?;
    assert!(!status.success() && err.contains("unexpected argument '--metrics-cert-dir'"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
