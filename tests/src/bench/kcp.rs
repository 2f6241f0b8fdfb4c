//! Section 13: many kcp workspaces through one APIExport virtual workspace into one downstream,
//! against the same number of objects from one plain API server (issue 31): initial sync time
//! and peak memory, rounds interleaved.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::report::Section;
use super::timing::secs;
use super::{Bench, mib};
use crate::kcp::{
    Workspace, client_for, create_docs, example_docs, kcp_api, kubeconfig_at, unique_name, write_kubeconfig,
};

/// One round: downsync from kcp's virtual workspace, then from the plain API server.
#[derive(Debug, Default, Clone)]
pub struct Round {
    /// Spawn to `/readyz` 200 (the initial sync done), through the virtual workspace.
    pub kcp_initial: Option<Duration>,
    /// Peak RSS of that process.
    pub kcp_rss: Option<u64>,
    /// The same from the plain API server.
    pub plain_initial: Option<Duration>,
    /// Peak RSS of that process.
    pub plain_rss: Option<u64>,
}

/// What the section measured.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Workspaces (and plain namespaces).
    pub workspaces: usize,
    /// ConfigMaps in each.
    pub per_workspace: usize,
    /// Creating the workspaces, their bindings and objects.
    pub setup: Option<Duration>,
    /// The rounds.
    pub rounds: Vec<Round>,
    /// What went wrong.
    pub errors: Vec<String>,
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(v)) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_configmaps(client: &Client, ns: &str, n: usize) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?)
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("cm-{i:04}")},
                    "data": {"i": i.to_string(), "payload": "x".repeat(200)}
                }))?;
                api.create(&PostParams::default(), &cm).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// The provider workspace with the example APIExport and `count` tenants binding it, each with
/// namespace `ns` holding `per` ConfigMaps; returns the kubeconfig of the export's virtual
/// workspace at `clusters/*`, and the workspaces.
async fn tenancy(count: usize, per: usize, ns: &str) -> Result<(std::path::PathBuf, Vec<Workspace>)> {
    let provider = Workspace::create(&unique_name("bench-provider")).await?;
    let provider_client = provider.client().await?;
    create_docs(&provider_client, example_docs("apiexport.yaml")?).await?;
    let exports = kcp_api(&provider_client, "APIExport", "apiexports");
    let url = wait_for("the APIExport's virtual workspace", || async {
        let e = serde_json::to_value(exports.get("downsync").await?)?;
        Ok(e.pointer("/status/virtualWorkspaces/0/url").and_then(Value::as_str).map(str::to_string))
    })
    .await?;
    let base = url.parse::<http::Uri>()?.path().trim_end_matches('/').to_string();
    let provider_path = format!("root:{}", provider.name);
    let tenants = futures::stream::iter(0..count)
        .map(|w| {
            let provider_path = provider_path.clone();
            async move {
                let ws = Workspace::create(&unique_name(&format!("bench-t{w}"))).await?;
                let client = ws.client().await?;
                let mut binding = example_docs("apibinding.yaml")?.remove(0);
                binding["spec"]["reference"]["export"]["path"] = json!(provider_path);
                create_docs(&client, vec![binding]).await?;
                let bindings = kcp_api(&client, "APIBinding", "apibindings");
                wait_for("an APIBinding to be bound", || async {
                    let b = serde_json::to_value(bindings.get("downsync").await?)?;
                    Ok((b.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")).then_some(()))
                })
                .await?;
                create_configmaps(&client, ns, per).await?;
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut workspaces = vec![provider];
    for t in tenants {
        workspaces.push(t?);
    }
    let kubeconfig = write_kubeconfig(&kubeconfig_at(&format!("{base}/clusters/*"))?, &format!("bench-vw-{ns}"))?;
    // Every object visible at the virtual workspace before downsync starts.
    let all = Api::<ConfigMap>::all(client_for(kubeconfig_at(&format!("{base}/clusters/*"))?).await?);
    let want = count * per;
    wait_for("every object at the virtual workspace", || async {
        let n = all
            .list_metadata(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
            .count();
        Ok((n >= want).then_some(()))
    })
    .await?;
    Ok((kubeconfig, workspaces))
}

/// Runs downsync once: spawn to `/readyz` 200 and peak RSS; then stops it and deletes the
/// downstream namespaces of `target`.
async fn one_run(b: &Bench, args: Vec<String>, target: &str, name: &str, want: usize) -> Result<(Duration, u64)> {
    let mut d = b.spawn(&args, name)?;
    let ready = d.wait_ready(Duration::from_secs(900)).await?;
    let took = ready.saturating_duration_since(d.started);
    let rss = d.peak_rss()?;
    let lp = ListParams::default().labels(&format!("downsync.dev/target={target}"));
    let copies = Api::<ConfigMap>::all(b.down.clone()).list_metadata(&lp).await?.items.len();
    d.stop(Duration::from_secs(60)).await?;
    let namespaces: Vec<String> = Api::<Namespace>::all(b.down.clone())
        .list_metadata(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    super::objects::delete_namespaces(&b.down, &namespaces, Duration::from_secs(900)).await?;
    anyhow::ensure!(copies == want, "{name}: {copies} copies downstream, expected {want}");
    Ok((took, rss))
}

fn common_args(b: &Bench, upstream: &std::path::Path, target: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["--upstream-kubeconfig".into(), upstream.display().to_string()];
    a.extend(["--downstream-kubeconfig".into(), b.clusters.downstream.kubeconfig.display().to_string()]);
    if let Some(c) = &b.clusters.downstream.context {
        a.extend(["--downstream-context".into(), c.clone()]);
    }
    a.extend(["--resource", "v1/ConfigMap", "--target", target].map(String::from));
    a.extend(["--workers".into(), b.opts.workers.to_string()]);
    a
}

/// Measures `rounds` interleaved rounds of `workspaces` × `per` ConfigMaps.
pub async fn measure(b: &Bench, workspaces: usize, per: usize, rounds: usize) -> Figures {
    let mut f = Figures { workspaces, per_workspace: per, ..Figures::default() };
    let run = super::run_id();
    let ns = format!("bench-kcp-{run}");
    let plain: Vec<String> = (0..workspaces).map(|w| format!("bench-plain-{run}-{w}")).collect();
    let t0 = Instant::now();
    let setup = async {
        let made = tenancy(workspaces, per, &ns).await?;
        for p in &plain {
            create_configmaps(&b.up, p, per).await?;
        }
        anyhow::Ok(made)
    };
    let (vw, all) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            f.errors.push(format!("setup: {e:#}"));
            return f;
        }
    };
    f.setup = Some(t0.elapsed());
    eprintln!("bench: 13. {workspaces} workspaces × {per} ready after {:.0?}", t0.elapsed());
    let want = workspaces * per;
    for r in 0..rounds {
        let mut round = Round::default();
        let target = format!("kcpb{run}{r}");
        let mut args = common_args(b, &vw, &target);
        args.extend(["--namespace".into(), ns.clone()]);
        match one_run(b, args, &target, &format!("kcp-{run}-{r}"), want).await {
            Ok((t, rss)) => (round.kcp_initial, round.kcp_rss) = (Some(t), Some(rss)),
            Err(e) => f.errors.push(format!("round {r}, kcp: {e:#}")),
        }
        let target = format!("plainb{run}{r}");
        let mut args = common_args(b, &b.clusters.upstream.kubeconfig, &target);
        if let Some(c) = &b.clusters.upstream.context {
            args.extend(["--upstream-context".into(), c.clone()]);
        }
        for p in &plain {
            args.extend(["--namespace".into(), p.clone()]);
        }
        match one_run(b, args, &target, &format!("plain-{run}-{r}"), want).await {
            Ok((t, rss)) => (round.plain_initial, round.plain_rss) = (Some(t), Some(rss)),
            Err(e) => f.errors.push(format!("round {r}, plain: {e:#}")),
        }
        eprintln!("bench: 13. round {r}: {round:?}");
        f.rounds.push(round);
    }
    for ws in all {
        if let Err(e) = ws.delete().await {
            f.errors.push(format!("cleanup: {e:#}"));
        }
    }
    let _ = std::fs::remove_file(&vw);
    if let Err(e) = super::objects::delete_namespaces(&b.up, &plain, Duration::from_secs(900)).await {
        f.errors.push(format!("cleanup upstream: {e:#}"));
    }
    let _ = Api::<Namespace>::all(b.up.clone()).delete(&ns, &DeleteParams::background()).await;
    f
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The section's table: one row per round, the ratios' median against the goals.
pub fn section(f: &Figures) -> Section {
    let mut s = Section::new(
        13,
        "kcp: many workspaces through one APIExport virtual workspace",
        &[
            "round",
            "initial sync: kcp",
            "initial sync: plain",
            "kcp / plain",
            "peak RSS: kcp",
            "peak RSS: plain",
            "kcp / plain",
        ],
    );
    let (mut times, mut mems) = (Vec::new(), Vec::new());
    for (i, r) in f.rounds.iter().enumerate() {
        let t = r.kcp_initial.zip(r.plain_initial).map(|(k, p)| k.as_secs_f64() / p.as_secs_f64().max(1e-9));
        let m = r.kcp_rss.zip(r.plain_rss).map(|(k, p)| k as f64 / (p as f64).max(1.0));
        times.extend(t);
        mems.extend(m);
        s.row(vec![
            (i + 1).to_string(),
            super::opt(r.kcp_initial, secs),
            super::opt(r.plain_initial, secs),
            super::opt(t, |x| format!("{x:.2}×")),
            super::opt(r.kcp_rss, mib),
            super::opt(r.plain_rss, mib),
            super::opt(m, |x| format!("{x:.2}×")),
        ]);
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.is_empty() { "—".to_string() } else { format!("{lo:.2}–{hi:.2}×") }
    };
    let (t, m) = (median(times.clone()), median(mems.clone()));
    s.goal(
        "initial sync through the virtual workspace ≤ 1.2× the same objects from one API server",
        t.map(|x| x <= 1.2),
        format!("median {} (rounds {})", t.map_or("—".into(), |x| format!("{x:.2}×")), spread(&times)),
    );
    s.goal(
        "peak memory ≤ 1.2× the same",
        m.map(|x| x <= 1.2),
        format!("median {} (rounds {})", m.map_or("—".into(), |x| format!("{x:.2}×")), spread(&mems)),
    );
    s.note(format!(
        "{} workspaces × {} ConfigMaps ({} objects, about 200 bytes of data each) bound to the example APIExport \
         (`examples/kcp/`), synced through its virtual workspace at `clusters/*` by one `downsync run`; against the \
         same number of ConfigMaps in {} namespaces of the plain upstream API server. Initial sync: spawn to \
         `/readyz` 200 (every object synced once); every copy is then counted downstream. Each round runs kcp, then \
         plain, on the same downstream, whose copies are deleted in between. Setup (workspaces, bindings, objects): {}.",
        f.workspaces,
        f.per_workspace,
        f.workspaces * f.per_workspace,
        f.workspaces,
        super::opt(f.setup, secs),
    ));
    for e in &f.errors {
        s.note(format!("Error: {e}"));
    }
    s
}
