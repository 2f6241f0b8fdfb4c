//! Settings that would make `downsync run` do harm are refused at start, naming the setting:
//! a metrics address already in use, a misspelt nested setting, upstream and downstream being
//! the same cluster (by URL or through another URL), an unknown feature gate and an absurd
//! worker count.

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
fn one_cluster_as_both_sides_is_refused_unless_allowed() -> anyhow::Result<()> {
    let c = clusters()?;
    let same = |upstream: &std::path::Path, extra: &[&str]| -> anyhow::Result<(bool, String)> {
        let mut a = run_from(upstream)?;
        a.extend([arg("--metrics-addr"), arg("off"), arg("--once")]);
        a.extend(extra.iter().map(arg));
        let (status, _, stderr) = run_to_end(&a)?;
        Ok((status.success(), stderr))
    };
    let (ok, err) = same(&c.downstream.kubeconfig, &[])?;
    assert!(!ok && err.contains("same cluster"), "{err}");

    // The same server under another name: caught by the cluster's identity, not the URL.
    let text = std::fs::read_to_string(&c.downstream.kubeconfig)?;
    assert!(text.contains("https://127.0.0.1:"), "the test clusters serve on 127.0.0.1");
    let other_name = std::env::temp_dir().join(format!("downsync-localhost-{}.kubeconfig", std::process::id()));
    std::fs::write(&other_name, text.replace("https://127.0.0.1:", "https://localhost:"))?;
    let (ok, err) = same(&other_name, &[])?;
    assert!(!ok && err.contains("same cluster") && err.contains("kube-system"), "{err}");

    let (ok, err) = same(&other_name, &["--allow-same-cluster"])?;
    assert!(ok, "allowed explicitly, it runs: {err}");
    Ok(())
}

#[test]
fn bad_flags_are_refused_naming_the_flag() -> anyhow::Result<()> {
    for (flag, value, want) in [
        ("--feature-gates", "NamespaceCleanup=true,Teleport=true", ["--feature-gates", "Teleport", "StatusUpsync"]),
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
    let file = dir.join("resync.yaml");
    std::fs::write(&file, "resyncSeconds: 18446744073709551615\n")?;
    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg("off"), arg("--config"), arg(&file)]);
    let err = refused(a)?;
    assert!(err.contains("resyncSeconds") && err.contains("give 1 to 31536000"), "{err}");

    let mut a = base()?;
    a.extend([arg("--metrics-addr"), arg("off"), arg("--orphan-grace-seconds"), arg("18446744073709551615")]);
    let err = refused(a)?;
    assert!(err.contains("orphanGraceSeconds") && err.contains("give 0 to 31536000"), "{err}");
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
