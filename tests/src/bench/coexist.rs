//! Section 11: sharing the downstream cluster with its other writers (issue 28).
//!
//! N Deployments are applied upstream by server-side apply without `replicas`; downstream a
//! MutatingAdmissionPolicy adds a label and an env var to every Deployment of the namespace,
//! and an HPA stand-in scales every other one to 3 through the `scale` subresource, and scales
//! it back every 15 s whenever it finds another value (an HPA's sync period). Per build (this
//! one, and `--baseline` when given, an earlier `downsync` binary, on the same clusters one
//! after the other): the initial sync time, downsync's writes of Deployments per minute over a
//! minute after convergence (goal 0), and the API calls per upstream change in a wave that
//! changes the image of a fifth of them. Calls are counted from the downstream API server's
//! `apiserver_request_total` (GET, POST, PUT, PATCH, DELETE of deployments; the bench itself
//! only LISTs there during the windows, and its scale calls are subtracted).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::http::Metrics;
use super::objects;
use super::report::Section;
use super::timing::secs;
use super::{Bench, run_id};

/// What one build measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// `this build` or `baseline`.
    pub label: String,
    /// From start to every Deployment present downstream.
    pub initial: Option<Duration>,
    /// Writes (not dry runs) of Deployments per minute after convergence.
    pub writes_per_min: Option<f64>,
    /// Server-side dry runs of Deployments per minute after convergence.
    pub dry_runs_per_min: Option<f64>,
    /// The HPA stand-in's own scale calls in that minute (the fight it had to put up).
    pub hpa_rescales: usize,
    /// API calls (GET and writes, dry runs included) per upstream change in the wave.
    pub calls_per_change: Option<f64>,
    /// Scaled Deployments that still had 3 replicas after the wave.
    pub hpa_kept: usize,
    /// Why it stopped, if it did.
    pub error: Option<String>,
}

/// The figures of the section.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Deployments.
    pub n: usize,
    /// This build first, then the baseline.
    pub runs: Vec<Run>,
}

/// How long the quiet window lasts.
const WINDOW: Duration = Duration::from_secs(60);
/// The HPA stand-in's sync period.
const HPA_PERIOD: Duration = Duration::from_secs(15);

/// Runs the section for this build's binary and, when given, a baseline binary.
pub async fn measure(b: &Bench, n: usize, baseline: Option<&Path>) -> Figures {
    let mut f = Figures { n, runs: Vec::new() };
    let mut builds = vec![("this build", b.downsync.clone())];
    if let Some(p) = baseline {
        builds.push(("baseline", p.to_path_buf()));
    }
    for (label, bin) in builds {
        eprintln!("bench: 11. coexistence: {label} ({})", bin.display());
        let mut run = Run { label: label.into(), ..Run::default() };
        let ns = format!("coexist-{}", run_id());
        if let Err(e) = one(b, &bin, &ns, n, &mut run).await {
            run.error = Some(format!("{e:#}").replace('\n', " "));
        }
        if let Err(e) = cleanup(b, &ns).await {
            eprintln!("bench: cleanup of {ns}: {e:#}");
        }
        f.runs.push(run);
    }
    f
}

async fn cleanup(b: &Bench, ns: &str) -> Result<()> {
    crate::admission::delete_injecting_policy(&b.down, ns).await?;
    for client in [&b.up, &b.down] {
        objects::delete_namespaces(client, &[ns.to_string()], Duration::from_secs(300)).await?;
    }
    Ok(())
}

fn deployment(ns: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "env": [{"name": "A", "value": "1"}]}]}}}})
}

fn name(i: usize) -> String {
    format!("d-{i:05}")
}

/// Applies Deployments `ids` upstream with `image`, as `kubectl apply --server-side` would.
async fn apply_all(b: &Bench, ns: &str, ids: &[usize], image: &str) -> Result<()> {
    let api = Api::<Deployment>::namespaced(b.up.clone(), ns);
    let pp = PatchParams::apply("kubectl");
    futures::stream::iter(ids.iter().copied())
        .map(|i| {
            let (api, pp) = (api.clone(), pp.clone());
            let obj = deployment(ns, &name(i), image);
            async move { api.patch(&name(i), &pp, &Patch::Apply(&obj)).await.map(|_| ()) }
        })
        .buffer_unordered(b.opts.workers)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The HPA stand-in: scales every even Deployment whose replicas are not 3 back to 3; returns
/// how many it scaled.
async fn hpa(b: &Bench, ns: &str) -> Result<usize> {
    let api = Api::<Deployment>::namespaced(b.down.clone(), ns);
    let pp = PatchParams { field_manager: Some("hpa".into()), ..PatchParams::default() };
    let list = api.list(&ListParams::default()).await?;
    let wrong: Vec<String> = list
        .items
        .iter()
        .filter_map(|d| {
            let name = d.metadata.name.clone()?;
            let i: usize = name.strip_prefix("d-")?.parse().ok()?;
            let replicas = serde_json::to_value(d).ok()?.pointer("/spec/replicas").and_then(Value::as_i64);
            (i.is_multiple_of(2) && replicas != Some(3)).then_some(name)
        })
        .collect();
    let count = wrong.len();
    futures::stream::iter(wrong)
        .map(|name| {
            let (api, pp) = (api.clone(), pp.clone());
            async move { api.patch_scale(&name, &pp, &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.map(|_| ()) }
        })
        .buffer_unordered(b.opts.workers)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}

/// Deployments downstream whose first container has `image`.
async fn with_image(b: &Bench, ns: &str, image: &str) -> Result<usize> {
    let list = Api::<Deployment>::namespaced(b.down.clone(), ns).list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|d| {
            serde_json::to_value(d).ok().and_then(|v| {
                v.pointer("/spec/template/spec/containers/0/image").and_then(Value::as_str).map(|s| s == image)
            }) == Some(true)
        })
        .count())
}

/// Calls on deployments the downstream API server served, as (writes, dry runs, GETs).
async fn calls(down: &Client) -> Result<(f64, f64, f64)> {
    let req = kube::core::Request::new("").get("metrics", &kube::api::GetParams::default())?;
    let text = down.request_text(req).await.context("GET /metrics from the downstream apiserver")?;
    let m = Metrics::parse(&text);
    let (mut writes, mut dry, mut gets) = (0.0, 0.0, 0.0);
    for s in m.0.iter().filter(|s| s.name == "apiserver_request_total") {
        let label = |k: &str| s.labels.iter().find(|(lk, _)| lk == k).map_or("", |(_, v)| v.as_str());
        if label("resource") != "deployments" {
            continue;
        }
        let is_dry = !label("dry_run").is_empty();
        match label("verb") {
            "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY" if is_dry => dry += s.value,
            "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY" => writes += s.value,
            "GET" => gets += s.value,
            _ => {}
        }
    }
    Ok((writes, dry, gets))
}

async fn one(b: &Bench, bin: &Path, ns: &str, n: usize, run: &mut Run) -> Result<()> {
    for client in [&b.up, &b.down] {
        objects::create_namespaces(client, &[ns.to_string()], ns).await?;
    }
    crate::admission::create_injecting_policy(&b.down, ns).await?;
    let all: Vec<usize> = (0..n).collect();
    apply_all(b, ns, &all, "nginx:1").await?;

    let mut args = super::sync::run_args(b, &[], &[ns.to_string()], None);
    args.extend(["--resource", "apps/v1/Deployment", "--target", ns].map(String::from));
    let started = Instant::now();
    let mut d =
        super::process::Downsync::spawn(bin, &args, &b.work.join(format!("downsync-{ns}.log")), &b.cache_home())?;
    let deadline = Duration::from_secs(120) + Duration::from_millis(100) * u32::try_from(n).unwrap_or(u32::MAX);
    while with_image(b, ns, "nginx:1").await? < n {
        d.check_alive()?;
        if started.elapsed() > deadline {
            bail!("not every Deployment downstream after {}", secs(deadline));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.initial = Some(started.elapsed());
    d.wait_ready(Duration::from_secs(60)).await?;

    // The HPA takes the even ones to 3; then a minute of its sync periods, counted.
    hpa(b, ns).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (w0, dr0, _) = calls(&b.down).await?;
    let window = Instant::now();
    let mut rescales = 0;
    while window.elapsed() < WINDOW {
        tokio::time::sleep(HPA_PERIOD.min(WINDOW.saturating_sub(window.elapsed()))).await;
        if window.elapsed() < WINDOW {
            rescales += hpa(b, ns).await?;
        }
    }
    let (w1, dr1, _) = calls(&b.down).await?;
    let minutes = window.elapsed().as_secs_f64() / 60.0;
    // The stand-in's own scale calls are PATCHes of deployments/scale, counted as deployments.
    run.writes_per_min = Some(((w1 - w0 - rescales as f64) / minutes).max(0.0));
    run.dry_runs_per_min = Some((dr1 - dr0) / minutes);
    run.hpa_rescales = rescales;

    // The wave: a fifth of them change their image upstream.
    hpa(b, ns).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wave: Vec<usize> = (0..n).step_by(5).collect();
    let (w0, dr0, g0) = calls(&b.down).await?;
    apply_all(b, ns, &wave, "nginx:2").await?;
    let started = Instant::now();
    while with_image(b, ns, "nginx:2").await? < wave.len() {
        d.check_alive()?;
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the wave did not reach downstream in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (w1, dr1, g1) = calls(&b.down).await?;
    run.calls_per_change = Some(((w1 - w0) + (dr1 - dr0) + (g1 - g0)) / wave.len() as f64);
    let list = Api::<Deployment>::namespaced(b.down.clone(), ns).list(&ListParams::default()).await?;
    run.hpa_kept = list
        .items
        .iter()
        .filter(|d| {
            let v = serde_json::to_value(d).unwrap_or_default();
            let even = v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .and_then(|n| n.strip_prefix("d-"))
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i.is_multiple_of(2));
            even && v.pointer("/spec/replicas").and_then(Value::as_i64) == Some(3)
        })
        .count();
    d.stop(Duration::from_secs(30)).await?;
    Ok(())
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

/// The section's table and goals.
pub fn section(f: &Figures) -> Section {
    let mut s = Section::new(
        11,
        "Coexistence: an HPA and an admission policy share the downstream",
        &[
            "build",
            "initial sync",
            "writes/min after convergence",
            "dry runs/min",
            "HPA re-scales in that minute",
            "API calls per upstream change",
            "HPA replicas kept after the wave",
        ],
    );
    for r in &f.runs {
        s.row(vec![
            r.label.clone(),
            r.initial.map_or_else(|| "—".into(), secs),
            num(r.writes_per_min),
            num(r.dry_runs_per_min),
            r.hpa_rescales.to_string(),
            num(r.calls_per_change),
            format!("{} of {}", r.hpa_kept, f.n.div_ceil(2)),
        ]);
        if let Some(e) = &r.error {
            s.note(format!("{}: failed: {e}", r.label));
        }
    }
    let this = f.runs.first();
    let base = f.runs.get(1);
    let writes = this.and_then(|r| r.writes_per_min);
    s.goal("downsync's writes per minute after convergence = 0", writes.map(|w| w < 0.5), num(writes));
    match (this.and_then(|r| r.calls_per_change), base.and_then(|r| r.calls_per_change)) {
        (Some(a), Some(b)) if b > 0.0 => {
            s.goal(
                "API calls per upstream change ≤ 1.1× the baseline",
                Some(a <= 1.1 * b),
                format!("{a:.2} vs {b:.2} ({:.2}×)", a / b),
            );
        }
        _ => s.goal("API calls per upstream change ≤ 1.1× the baseline", None, "no baseline run".into()),
    }
    match (this.and_then(|r| r.initial), base.and_then(|r| r.initial)) {
        (Some(a), Some(b)) => s.goal(
            "initial sync ≤ 1.05× the baseline",
            Some(a.as_secs_f64() <= 1.05 * b.as_secs_f64()),
            format!("{} vs {} ({:.2}×)", secs(a), secs(b), a.as_secs_f64() / b.as_secs_f64()),
        ),
        _ => s.goal("initial sync ≤ 1.05× the baseline", None, "no baseline run".into()),
    }
    s.note(format!(
        "{} Deployments applied upstream by server-side apply without `replicas`; downstream a MutatingAdmissionPolicy adds a label and an env var to each, and an HPA stand-in (field manager `hpa`, the `scale` subresource) scales every other one to 3 and, every 15 s, back to 3 wherever it finds another value. Writes and dry runs are the downstream API server's `apiserver_request_total` for deployments (the stand-in's own scale calls subtracted); API calls per change are its GETs, writes and dry runs of deployments during a wave that changes the image of every fifth Deployment, divided by the changes. The builds run one after the other on the same control planes.",
        f.n
    ));
    s
}
