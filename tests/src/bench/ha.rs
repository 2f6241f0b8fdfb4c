//! Section 8: high availability. Failover (`kill -9` of a holder, and SIGTERM) to the first
//! downstream write by the new holder, over several rounds with client-go's default timings;
//! and the initial sync of N ConfigMaps by 3 sharded replicas against 1 process.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::objects::{Kind, create_namespaces, delete_namespaces};
use super::process::Downsync;
use super::report::Section;
use super::sync::run_args;
use super::timing::{percentile, ratio, secs};
use super::{Bench, run_id};
use crate::ha::namespaces_over_shards;

/// What section 8 measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// `kill -9` of a holder to the first downstream write by its successor.
    pub failover: Vec<Duration>,
    /// SIGTERM of a holder to the first downstream write by its successor.
    pub graceful: Vec<Duration>,
    /// Objects of the initial-sync comparison.
    pub n: usize,
    /// Initial sync by one process (no HA).
    pub one: Option<Duration>,
    /// Initial sync by three replicas sharing 6 shards.
    pub three: Option<Duration>,
    /// What failed.
    pub errors: Vec<String>,
}

/// client-go's defaults, as downsync's: lease 15 s, renew deadline 10 s, retry 2 s.
const LEASE: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

struct Replicas<'a> {
    b: &'a Bench,
    base: Vec<String>,
    target: String,
    procs: Vec<Option<Downsync>>,
}

impl Replicas<'_> {
    fn id(&self, n: usize) -> String {
        format!("{}-r{n}", self.target)
    }

    fn start(&mut self, n: usize) -> Result<()> {
        let d = self.b.spawn_replica(&self.base, &self.id(n), Some(&self.id(n)))?;
        self.procs[n] = Some(d);
        Ok(())
    }

    /// The shards each replica holds, from its `/shards`; None while one does not answer.
    async fn held(&self) -> Option<Vec<Vec<u64>>> {
        let mut out = Vec::new();
        for p in self.procs.iter().flatten() {
            let (code, body) = super::http::get(p.addr, "/shards", Duration::from_secs(2)).await.ok()?;
            if code != 200 {
                return None;
            }
            let v: Value = serde_json::from_str(&body).ok()?;
            let mine = v["leases"].as_array()?.iter().filter(|l| l["mine"] == true).filter_map(|l| l["shard"].as_u64());
            out.push(mine.collect());
        }
        Some(out)
    }

    /// Waits until every running replica holds exactly `each` shards.
    async fn settle(&self, each: usize, timeout: Duration) -> Result<Vec<Vec<u64>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = self.held().await
                && h.iter().all(|s| s.len() == each)
            {
                return Ok(h);
            }
            if Instant::now() > deadline {
                bail!("the replicas did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Patches `ns/name` upstream every 200 ms with `data.v = "<tag>-<i>"` until the downstream copy
/// (in `down_ns`) shows a value with that tag; returns how long after `t0` it did.
async fn first_write(up: &Client, down: &Client, ns: &str, down_ns: &str, tag: &str, t0: Instant) -> Result<Duration> {
    let up_api: Api<ConfigMap> = Api::namespaced(up.clone(), ns);
    let down_api: Api<ConfigMap> = Api::namespaced(down.clone(), down_ns);
    let mut i = 0u32;
    let mut next_patch = Instant::now();
    loop {
        if Instant::now() >= next_patch {
            up_api
                .patch("probe", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": format!("{tag}-{i}")}})))
                .await?;
            i += 1;
            next_patch += Duration::from_millis(200);
        }
        if let Some(cm) = down_api.get_opt("probe").await?
            && cm.data.as_ref().and_then(|d| d.get("v")).is_some_and(|v| v.starts_with(&format!("{tag}-")))
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("no write by a new holder within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_configmaps(client: &Client, namespaces: &[String], per_ns: usize) -> Result<()> {
    let all: Vec<(String, String)> =
        namespaces.iter().flat_map(|ns| (0..per_ns).map(move |i| (ns.clone(), format!("cm-{i:05}")))).collect();
    futures::stream::iter(all)
        .map(|(ns, name)| async move {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "data": {"v": "0", "pad": "x".repeat(200)}}),
            )?;
            Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &cm).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Counts the ConfigMaps `target` owns in the namespaces.
async fn owned_count(client: &Client, namespaces: &[String], target: &str) -> Result<usize> {
    let lp = ListParams::default().labels(&format!("downsync.dev/target={target}"));
    let mut n = 0;
    for ns in namespaces {
        n += Api::<ConfigMap>::namespaced(client.clone(), ns).list_metadata(&lp).await?.items.len();
    }
    Ok(n)
}

/// The failover rounds: 3 replicas, 3 shards, one probe object per shard.
async fn failover(b: &Bench, kills: usize, f: &mut Figures) -> Result<()> {
    let run = run_id();
    let target = format!("bench-ha-{run}");
    let namespaces = namespaces_over_shards(&format!("bench-ha-{run}"), 3, 3);
    create_namespaces(&b.up, &namespaces, &run).await?;
    create_configmaps(&b.up, &namespaces, 50).await?;
    for ns in &namespaces {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "probe", "namespace": ns}}))?;
        Api::<ConfigMap>::namespaced(b.up.clone(), ns).create(&PostParams::default(), &cm).await?;
    }
    let mut base = run_args(b, &[Kind::ConfigMap], &namespaces, None);
    base.extend(["--target", &target, "--ha", "--ha-shards", "3"].map(String::from));
    let mut r = Replicas { b, base, target, procs: vec![None, None, None] };
    for n in 0..3 {
        r.start(n)?;
    }
    let result = async {
        r.settle(1, Duration::from_secs(120)).await?;
        for round in 0..2 * kills {
            let graceful = round >= kills;
            let held = r.settle(1, Duration::from_secs(120)).await?;
            // Rotate over the shards; the victim is the replica holding this round's shard.
            let shard = (round % 3) as u64;
            let victim = held.iter().position(|h| h.contains(&shard)).context("no holder")?;
            let ns = namespaces
                .iter()
                .find(|ns| u64::from(downsync::app::ha::shard_of(Some(ns.as_str()), 3)) == shard)
                .context("no namespace of the shard")?
                .clone();
            let proc = r.procs[victim].take().context("victim not running")?;
            // The clock starts at the signal; the probe changes start once the process is gone,
            // so that every write of them is the new holder's (a SIGTERM'd holder still syncs
            // what it holds until it has released it).
            let t0 = Instant::now();
            if graceful {
                proc.stop(Duration::from_secs(60)).await?;
            } else {
                proc.kill().await?;
            }
            let took = first_write(&b.up, &b.down, &ns, &ns, &format!("round{round}"), t0).await?;
            if graceful {
                f.graceful.push(took)
            } else {
                f.failover.push(took)
            }
            eprintln!(
                "bench: 8. {} {}: {}",
                if graceful { "SIGTERM" } else { "kill -9" },
                round % kills + 1,
                secs(took)
            );
            r.start(victim)?;
        }
        anyhow::Ok(())
    }
    .await;
    for p in r.procs.iter_mut().filter_map(Option::take) {
        let _ = p.stop(Duration::from_secs(30)).await;
    }
    delete_namespaces(&b.up, &namespaces, Duration::from_secs(120)).await?;
    delete_namespaces(&b.down, &namespaces, Duration::from_secs(120)).await?;
    result
}

/// Initial sync of `n` ConfigMaps by `replicas` processes (1: no HA; more: HA with 6 shards),
/// from spawn to every object downstream. The downstream namespaces get a prefix of their own.
async fn initial(b: &Bench, namespaces: &[String], n: usize, replicas: usize) -> Result<Duration> {
    let run = run_id();
    let target = format!("bench-init-{run}");
    let prefix = format!("i{run}-");
    let mut base = run_args(b, &[Kind::ConfigMap], namespaces, None);
    base.extend(["--target", &target, "--namespace-prefix", &prefix].map(String::from));
    if replicas > 1 {
        base.extend(["--ha", "--ha-shards", "6"].map(String::from));
    }
    let down_namespaces: Vec<String> = namespaces.iter().map(|ns| format!("{prefix}{ns}")).collect();
    let started = Instant::now();
    let mut procs = Vec::new();
    for i in 0..replicas {
        let id = format!("{target}-r{i}");
        procs.push(if replicas > 1 { b.spawn_replica(&base, &id, Some(&id))? } else { b.spawn(&base, &id)? });
    }
    let result = async {
        loop {
            if owned_count(&b.down, &down_namespaces, &target).await? >= n {
                return anyhow::Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(1200) {
                bail!("the initial sync of {n} objects did not finish in 20 minutes");
            }
            for p in &mut procs {
                p.check_alive()?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    for p in procs {
        let _ = p.stop(Duration::from_secs(60)).await;
    }
    delete_namespaces(&b.down, &down_namespaces, Duration::from_secs(300)).await?;
    result
}

/// Runs section 8: `kills` rounds of each failover kind, and the initial sync of `n` objects.
pub async fn measure(b: &Bench, kills: usize, n: usize) -> Figures {
    let mut f = Figures { n, ..Figures::default() };
    if kills > 0
        && let Err(e) = failover(b, kills, &mut f).await
    {
        f.errors.push(format!("failover: {e:#}"));
    }
    if n > 0 {
        let run = run_id();
        let namespaces: Vec<String> = (0..12).map(|i| format!("bench-init-{run}-{i}")).collect();
        let setup = async {
            create_namespaces(&b.up, &namespaces, &run).await?;
            create_configmaps(&b.up, &namespaces, n.div_ceil(12)).await
        };
        match setup.await {
            Ok(()) => {
                let total = n.div_ceil(12) * 12;
                match initial(b, &namespaces, total, 1).await {
                    Ok(d) => f.one = Some(d),
                    Err(e) => f.errors.push(format!("initial sync, 1 process: {e:#}")),
                }
                match initial(b, &namespaces, total, 3).await {
                    Ok(d) => f.three = Some(d),
                    Err(e) => f.errors.push(format!("initial sync, 3 replicas: {e:#}")),
                }
                f.n = total;
            }
            Err(e) => f.errors.push(format!("creating {n} objects: {e:#}")),
        }
        if let Err(e) = delete_namespaces(&b.up, &namespaces, Duration::from_secs(300)).await {
            f.errors.push(format!("cleanup: {e:#}"));
        }
    }
    f
}

/// The report section.
pub fn section(f: &Figures) -> Section {
    let mut s = Section::new(8, "High availability (Leases)", &["measurement", "runs", "p50", "p99", "max"]);
    let stats = |v: &[Duration]| {
        if v.is_empty() {
            vec!["—".to_string(), "—".into(), "—".into()]
        } else {
            vec![secs(percentile(v, 50.0)), secs(percentile(v, 99.0)), secs(percentile(v, 100.0))]
        }
    };
    let mut row = |name: &str, v: &[Duration]| {
        let mut cells = vec![name.to_string(), v.len().to_string()];
        cells.extend(stats(v));
        s.row(cells);
    };
    row("kill -9 of a holder → first write by the new holder", &f.failover);
    row("SIGTERM of a holder → first write by the new holder", &f.graceful);
    let one = |d: Option<Duration>| d.map_or_else(|| "—".to_string(), secs);
    s.row(vec![format!("initial sync of {}: 1 process", f.n), "1".into(), one(f.one), "—".into(), "—".into()]);
    s.row(vec![
        format!("initial sync of {}: 3 replicas, 6 shards", f.n),
        "1".into(),
        one(f.three),
        "—".into(),
        "—".into(),
    ]);
    let p99 = (!f.failover.is_empty()).then(|| percentile(&f.failover, 99.0));
    s.goal(
        "failover p99 ≤ lease duration + retry period (17 s)",
        p99.map(|p| p <= LEASE + RETRY),
        p99.map_or_else(|| "not measured".into(), |p| format!("p99 {} over {} kills", secs(p), f.failover.len())),
    );
    let g99 = (!f.graceful.is_empty()).then(|| percentile(&f.graceful, 99.0));
    s.goal(
        "graceful handover p99 ≤ 3 s",
        g99.map(|p| p <= Duration::from_secs(3)),
        g99.map_or_else(|| "not measured".into(), |p| format!("p99 {} over {} SIGTERMs", secs(p), f.graceful.len())),
    );
    let r = match (f.three, f.one) {
        (Some(t), Some(o)) if !o.is_zero() => Some(t.as_secs_f64() / o.as_secs_f64()),
        _ => None,
    };
    s.goal(
        "sharding costs little: 3 sharded replicas ≤ 1.25× one process (no speed-up expected on 2 cores; the \
         1.25 is this bench's reading of 'little')",
        r.map(|r| r <= 1.25),
        match (f.three, f.one) {
            (Some(t), Some(o)) => format!("{} at N={}", ratio(t, o), f.n),
            _ => "not measured".into(),
        },
    );
    s.note(
        "Failover: 3 replicas with client-go's timings (lease 15 s, renew deadline 10 s, retry 2 s), 3 shards, one \
         held by each. Each round picks the holder of the next shard, stops it (SIGKILL, or SIGTERM in the graceful \
         rounds), waits for the process to exit, then patches a probe ConfigMap of that shard upstream every 200 ms; \
         the time is from the signal until a downstream read (every 20 ms) shows one of those values, which only the \
         new holder can have written. The stopped replica is then started again and the shards rebalance before the next round.",
    );
    s.note(
        "Initial sync: ConfigMaps (200-byte data) over 12 upstream namespaces; from spawning the process(es) to a \
         downstream list (every 0.5 s) counting all of them, each run into namespaces of its own (a prefix). With HA \
         the time includes the first retry period before replicas acquire shards.",
    );
    for e in &f.errors {
        s.note(format!("Error: {}", e.replace('\n', " ")));
    }
    s
}
