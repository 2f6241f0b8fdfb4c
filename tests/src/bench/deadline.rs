//! Section 10: a plugin that burns its whole deadline on every call, against `/healthz` latency
//! and the sync latency of another kind.
//!
//! One `downsync run` syncs Secrets and ConfigMaps with the `faulty` test plugin on ConfigMaps.
//! First a quiet phase (no ConfigMap asks the plugin to spin), then a phase with 12 ConfigMaps
//! whose every call spins until the 1 s wall-clock deadline stops it (the fuel is set so high
//! that the deadline ends each call) and is retried with backoff; the bench patches them twice a
//! second so new calls keep coming. Each phase lasts at least 10 s: `/healthz` is probed every
//! 50 ms and one Secret after another is patched upstream, timed until a downstream GET sees
//! the change.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::http;
use super::objects;
use super::report::Section;
use super::{Bench, run_id};

/// What one phase measured.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// `/healthz` round trips.
    pub healthz: Vec<Duration>,
    /// `/healthz` answers that were not 200 (or failed).
    pub healthz_failures: usize,
    /// Upstream Secret patch to the change seen downstream.
    pub secret: Vec<Duration>,
    /// Secret changes not seen within 30 s.
    pub missed: usize,
}

/// The figures of the section.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Without spinning objects.
    pub quiet: Phase,
    /// With 12 ConfigMaps burning their deadline on every call.
    pub spinning: Phase,
    /// Calls that ended at the deadline during the spinning phase.
    pub deadlines: f64,
    /// Why it could not run, if it could not.
    pub error: Option<String>,
}

const SECRETS: usize = 20;
const SPINNERS: usize = 12;
/// How long each phase measures at least: long enough for a p99 over a few hundred samples.
const PHASE_MIN: Duration = Duration::from_secs(10);

/// Runs the section.
pub async fn measure(b: &Bench) -> Figures {
    let run = run_id();
    let ns = format!("deadline-{run}");
    let mut f = Figures::default();
    if let Err(e) = phases(b, &run, &ns, &mut f).await {
        f.error = Some(format!("{e:#}").replace('\n', " "));
    }
    for client in [&b.up, &b.down] {
        if let Err(e) = objects::delete_namespaces(client, std::slice::from_ref(&ns), Duration::from_secs(300)).await {
            eprintln!("bench: cleanup of {ns}: {e:#}");
        }
    }
    f
}

async fn phases(b: &Bench, run: &str, ns: &str, f: &mut Figures) -> Result<()> {
    objects::create_namespaces(&b.up, &[ns.to_string()], run).await?;
    let secrets = Api::<Secret>::namespaced(b.up.clone(), ns);
    for i in 0..SECRETS {
        let obj: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("s-{i:02}"), "namespace": ns},
            "stringData": {"v": "0"},
        }))?;
        secrets.create(&PostParams::default(), &obj).await?;
    }
    let plugins = b.work.join(format!("deadline-plugins-{run}"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(b.plugins.join("downsync_plugin_testing_faulty.wasm"), plugins.join("faulty.wasm"))?;
    let config = b.work.join(format!("deadline-{run}.yaml"));
    std::fs::write(&config, "engine: {fuel: 1000000000000}\n")?;
    let mut args = super::sync::run_args(b, &[], &[], None);
    args.extend(
        [
            "--config",
            &config.display().to_string(),
            "--resource",
            "v1/ConfigMap",
            "--resource",
            "v1/Secret",
            "--namespace",
            ns,
            "--target",
            ns,
            "--plugins-dir",
            &plugins.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_string()),
    );
    let mut d = b.spawn(&args, &format!("deadline-{run}"))?;
    d.wait_ready(Duration::from_secs(120)).await?;
    eprintln!("bench: 10. deadline: quiet phase");
    f.quiet = phase(b, ns, d.addr, 1, false).await?;
    let configmaps = Api::<ConfigMap>::namespaced(b.up.clone(), ns);
    for i in 0..SPINNERS {
        let obj: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("spin-{i:02}"), "namespace": ns,
                         "annotations": {"downsync.dev/fault": "loop"}},
            "data": {"v": "0"},
        }))?;
        configmaps.create(&PostParams::default(), &obj).await?;
    }
    // Let the spinning calls fill the workers before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("bench: 10. deadline: spinning phase");
    f.spinning = phase(b, ns, d.addr, 2, true).await?;
    if let Ok(m) = d.metrics().await {
        f.deadlines = m.sum("downsync_plugin_errors_total", &[("plugin", "faulty"), ("failure", "deadline")]);
    }
    d.check_alive()?;
    let _ = d.stop(Duration::from_secs(60)).await?;
    Ok(())
}

/// Probes `/healthz` every 50 ms while patching the Secrets in turn (each at least once, for at
/// least [`PHASE_MIN`]) and timing each change's arrival; with `spin`, also patches the spinning
/// ConfigMaps twice a second, so the plugin is asked to spin again while their retries back off.
async fn phase(b: &Bench, ns: &str, addr: std::net::SocketAddr, round: usize, spin: bool) -> Result<Phase> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut times, mut failures) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                match http::get(addr, "/healthz", Duration::from_secs(5)).await {
                    Ok((200, _)) => times.push(t0.elapsed()),
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (times, failures)
        })
    };
    let toucher = spin.then(|| {
        let stop = std::sync::Arc::clone(&stop);
        let configmaps = Api::<ConfigMap>::namespaced(b.up.clone(), ns);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                for i in 0..SPINNERS {
                    let patch = Patch::Merge(json!({"data": {"v": n.to_string()}}));
                    // A failed touch only means one fewer spinning call; the figures still stand.
                    let _ = configmaps.patch(&format!("spin-{i:02}"), &PatchParams::default(), &patch).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let up = Api::<Secret>::namespaced(b.up.clone(), ns);
    let down = Api::<Secret>::namespaced(b.down.clone(), ns);
    let mut p = Phase::default();
    let started = Instant::now();
    let mut k = 0;
    while k < SECRETS || started.elapsed() < PHASE_MIN {
        let name = format!("s-{:02}", k % SECRETS);
        let want = format!("{round}-{k}");
        k += 1;
        let t0 = Instant::now();
        up.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"stringData": {"v": want}}))).await?;
        loop {
            let got = down.get_opt(&name).await?.and_then(|s| s.data).and_then(|d| d.get("v").map(|b| b.0.clone()));
            if got.as_deref() == Some(want.as_bytes()) {
                p.secret.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                p.missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (p.healthz, p.healthz_failures) = probe.await?;
    if let Some(t) = toucher {
        t.await?;
    }
    Ok(p)
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The section for the measured figures.
pub fn section(f: &Figures) -> Section {
    let mut s = Section::new(
        10,
        "A plugin burning its deadline on every call",
        &[
            "phase",
            "/healthz p50",
            "/healthz p99",
            "/healthz not 200",
            "Secret change p50",
            "Secret change p99",
            "not seen in 30 s",
        ],
    );
    if let Some(e) = &f.error {
        s.row(vec![
            format!("failed to run: {e}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        s.issue_goal(5, "/healthz p99 ≤ 100 ms while a plugin burns its deadline", None, "failed to run".into());
        return s;
    }
    for (name, p) in [("quiet", &f.quiet), ("12 ConfigMaps spinning", &f.spinning)] {
        s.row(vec![
            name.into(),
            millis(percentile(&p.healthz, 50.0)),
            millis(percentile(&p.healthz, 99.0)),
            p.healthz_failures.to_string(),
            millis(percentile(&p.secret, 50.0)),
            millis(percentile(&p.secret, 99.0)),
            p.missed.to_string(),
        ]);
    }
    let hz = percentile(&f.spinning.healthz, 99.0);
    s.issue_goal(
        5,
        "/healthz p99 ≤ 100 ms while a plugin burns its deadline on every call",
        (!f.spinning.healthz.is_empty())
            .then_some(hz <= Duration::from_millis(100) && f.spinning.healthz_failures == 0),
        format!("p99 {} ({} probes)", millis(hz), f.spinning.healthz.len()),
    );
    let (quiet, spin) = (percentile(&f.quiet.secret, 99.0), percentile(&f.spinning.secret, 99.0));
    s.issue_goal(
        5,
        "other kinds do not stall: every Secret change arrives, p99 ≤ 2× the quiet p99",
        (!f.spinning.secret.is_empty()).then_some(f.spinning.missed == 0 && spin <= quiet * 2),
        format!("{} spinning, {} quiet, {} missed", millis(spin), millis(quiet), f.spinning.missed),
    );
    s.note(format!(
        "One `downsync run` over Secrets and ConfigMaps with the `faulty` test plugin on ConfigMaps, fuel set so \
         high that a 1 s wall-clock deadline ends each spinning call. In each phase `/healthz` is probed every \
         50 ms and {SECRETS} Secrets are patched upstream in turn, each change timed until a downstream GET \
         (polled every 5 ms) sees it, for at least {} s. The spinning phase adds {SPINNERS} ConfigMaps on which \
         every call spins to its deadline and is retried with backoff; the bench patches them twice a second so \
         new calls keep coming ({:.0} calls ended at the deadline by the end). Samples: {} probes and {} Secret \
         changes quiet, {} and {} spinning.",
        PHASE_MIN.as_secs(),
        f.deadlines,
        f.quiet.healthz.len(),
        f.quiet.secret.len(),
        f.spinning.healthz.len(),
        f.spinning.secret.len()
    ));
    s
}
