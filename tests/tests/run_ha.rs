//! Several `downsync run --ha` replicas on one target, coordinated by Leases in the downstream
//! cluster. Who wrote what is read from the downstream API server's audit log (each replica
//! sends its identity in its user agent), never from downsync's own counters: every object is
//! written by the holder of its shard; a killed holder is replaced only after its Lease ran out
//! and nothing is lost or written twice; a joining replica takes a fair share without any object
//! being rewritten; SIGTERM hands the Lease over without waiting for it to expire.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result};
use downsync_tests::audit::{Write, downsync_writes};
use downsync_tests::daemon::{Daemon, run_to_end};
use downsync_tests::ha::{
    HaSetup, TEST_TIMING, create_namespaces, delete_namespaces, held, namespaces_over_shards, wait_settled,
};
use downsync_tests::objects::mk_configmap;
use downsync_tests::{TestEnv, clusters, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn setup(env: &TestEnv, shards: u32, namespaces: usize, timing: (u64, u64, u64)) -> HaSetup {
    // The test namespace's name is unique: as the target, it keeps this test's Leases and
    // owned objects apart from every other test's.
    let target = env.namespace.clone();
    HaSetup {
        namespaces: namespaces_over_shards(&target, shards, namespaces),
        lease_namespace: env.namespace.clone(),
        target,
        shards,
        timing,
        extra: Vec::new(),
    }
}

/// Creates `per_ns` ConfigMaps `cm-<i>` with `data.v = "0"` in each namespace, 16 at a time.
async fn create_configmaps(client: &Client, namespaces: &[String], per_ns: usize) -> Result<()> {
    let all: Vec<(String, String)> =
        namespaces.iter().flat_map(|ns| (0..per_ns).map(move |i| (ns.clone(), format!("cm-{i:04}")))).collect();
    futures::stream::iter(all)
        .map(|(ns, name)| async move {
            let cm: ConfigMap = serde_json::from_value(mk_configmap(&ns, &name, json!({"v": "0"})))?;
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &cm)
                .await
                .with_context(|| format!("creating {ns}/{name}"))?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// The `data.v` of every ConfigMap `target` owns in the namespaces, by (namespace, name).
async fn owned_values(
    client: &Client,
    namespaces: &[String],
    target: &str,
) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let lp = ListParams::default().labels(&format!("downsync.dev/target={target}"));
        for cm in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&lp).await?.items {
            let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default();
            out.insert((ns.clone(), cm.metadata.name.unwrap_or_default()), v);
        }
    }
    Ok(out)
}

/// Waits until downstream holds exactly the upstream ConfigMaps' values.
async fn wait_converged(env: &TestEnv, s: &HaSetup, what: &str) -> Result<()> {
    eventually(what, Duration::from_secs(180), || async {
        let up = values(&env.upstream, &s.namespaces).await?;
        let down = owned_values(&env.downstream, &s.namespaces, &s.target).await?;
        Ok((up == down).then_some(()))
    })
    .await
}

/// `data.v` of the upstream ConfigMaps `cm-*`.
async fn values(client: &Client, namespaces: &[String]) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    for ns in namespaces {
        for cm in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items {
            let name = cm.metadata.name.clone().unwrap_or_default();
            if name.starts_with("cm-") {
                let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default();
                out.insert((ns.clone(), name), v);
            }
        }
    }
    Ok(out)
}

/// This setup's successful ConfigMap writes from the audit log, in order.
fn configmap_writes(s: &HaSetup) -> Result<Vec<Write>> {
    let ours: BTreeSet<&String> = s.namespaces.iter().collect();
    let mut w: Vec<Write> = downsync_writes()?
        .into_iter()
        .filter(|w| w.succeeded() && w.resource == "configmaps")
        .filter(|w| w.namespace.as_ref().is_some_and(|n| ours.contains(n)))
        .filter(|w| w.replica().is_some_and(|r| r.starts_with(&s.target)))
        .collect();
    w.sort_by_key(|w| w.received);
    Ok(w)
}

/// Successful writes of this setup's shard Leases, in order.
fn lease_writes(s: &HaSetup) -> Result<Vec<Write>> {
    let prefix = format!("downsync-{}-shard-", s.target);
    let mut w: Vec<Write> = downsync_writes()?
        .into_iter()
        .filter(|w| w.succeeded() && w.resource == "leases")
        .filter(|w| w.name.as_ref().is_some_and(|n| n.starts_with(&prefix)))
        .collect();
    w.sort_by_key(|w| w.received);
    Ok(w)
}

fn secs(d: u64) -> SignedDuration {
    SignedDuration::from_secs(i64::try_from(d).unwrap_or(i64::MAX))
}

async fn cleanup(env: TestEnv, s: &HaSetup) -> Result<()> {
    delete_namespaces(&env.upstream, &s.namespaces).await?;
    delete_namespaces(&env.downstream, &s.namespaces).await?;
    env.cleanup().await
}

#[tokio::test]
async fn three_replicas_write_each_object_once_from_the_holder_of_its_shard() -> Result<()> {
    let env = TestEnv::new("ha-three").await?;
    // Six shards over three replicas: each holds exactly two.
    let s = setup(&env, 6, 12, TEST_TIMING);
    create_namespaces(&env.upstream, &s.namespaces).await?;
    let replicas: Vec<Daemon> = (0..3).map(|n| s.start(n)).collect::<Result<_>>()?;
    let named: Vec<(String, &Daemon)> = replicas.iter().enumerate().map(|(n, d)| (s.identity(n), d)).collect();
    let holders = wait_settled(&s, &named).await?;

    // 1,000 objects, created after the replicas settled.
    create_configmaps(&env.upstream, &s.namespaces[..10], 100).await?;
    wait_converged(&env, &s, "1,000 objects downstream").await?;
    // Let any late duplicate write show up in the log before reading it.
    tokio::time::sleep(Duration::from_secs(s.timing.2 * 2)).await;
    assert_eq!(wait_settled(&s, &named).await?, holders, "no shard changed hands during the test");

    let writes = configmap_writes(&s)?;
    let mut per_object: BTreeMap<(String, String), Vec<&Write>> = BTreeMap::new();
    for w in &writes {
        let key = (w.namespace.clone().unwrap_or_default(), w.name.clone().unwrap_or_default());
        per_object.entry(key).or_default().push(w);
    }
    assert_eq!(per_object.len(), 1000, "every object was written");
    let mut writers = BTreeSet::new();
    for ((ns, name), ws) in &per_object {
        let holder = &holders[&s.shard_of(ns)];
        assert_eq!(ws.len(), 1, "{ns}/{name} written {} times: {ws:?}", ws.len());
        let replica = ws[0].replica().unwrap_or_default();
        assert_eq!(replica, holder, "{ns}/{name} written by {replica}, but its shard is held by {holder}");
        writers.insert(replica.to_string());
    }
    assert_eq!(writers.len(), 3, "all three replicas wrote their shards: {writers:?}");

    // `downsync shards` shows the same holders, from the Leases.
    let down = clusters()?.downstream;
    let mut args: Vec<OsString> = vec!["shards".into(), "--downstream-kubeconfig".into(), down.kubeconfig.into()];
    if let Some(ctx) = down.context {
        args.extend(["--downstream-context".into(), ctx.into()]);
    }
    args.extend([
        "--target".into(),
        s.target.clone().into(),
        "--ha-namespace".into(),
        s.lease_namespace.clone().into(),
    ]);
    let (status, out, err) = run_to_end(&args)?;
    assert!(status.success(), "downsync shards failed: {err}");
    for (shard, holder) in &holders {
        let line = format!("downsync-{}-shard-{shard} ", s.target);
        let row =
            out.lines().find(|l| l.starts_with(&line)).with_context(|| format!("no row for shard {shard}:\n{out}"))?;
        assert!(row.contains(holder.as_str()), "shard {shard} held by {holder}: {row}");
    }
    assert_eq!(out.lines().filter(|l| l.contains(" member ")).count(), 3, "three members:\n{out}");
    drop(replicas);
    cleanup(env, &s).await
}

#[tokio::test]
async fn a_killed_holder_is_replaced_only_after_its_lease_ran_out_and_nothing_is_lost() -> Result<()> {
    let env = TestEnv::new("ha-kill").await?;
    let s = setup(&env, 3, 6, TEST_TIMING);
    create_namespaces(&env.upstream, &s.namespaces).await?;
    create_configmaps(&env.upstream, &s.namespaces, 10).await?;
    let mut replicas: Vec<Option<Daemon>> = (0..3).map(|n| s.start(n).map(Some)).collect::<Result<_>>()?;
    let holders = {
        let named: Vec<(String, &Daemon)> =
            replicas.iter().enumerate().filter_map(|(n, d)| Some((s.identity(n), d.as_ref()?))).collect();
        wait_settled(&s, &named).await?
    };
    wait_converged(&env, &s, "the initial sync").await?;

    // An update wave of 5 rounds over all 60 objects; the holder of shard 0 is killed after the
    // first round, while the wave goes on.
    let victim_id = holders[&0].clone();
    let victim = (0..3).find(|&n| s.identity(n) == victim_id);
    let rounds = 5;
    let objects: Vec<(String, String)> =
        s.namespaces.iter().flat_map(|ns| (0..10).map(move |i| (ns.clone(), format!("cm-{i:04}")))).collect();
    for round in 1..=rounds {
        for (ns, name) in &objects {
            Api::<ConfigMap>::namespaced(env.upstream.clone(), ns)
                .patch(name, &PatchParams::default(), &Patch::Merge(json!({"data": {"v": round.to_string()}})))
                .await?;
        }
        if round == 1
            && let Some(n) = victim
            && let Some(d) = replicas[n].take()
        {
            d.kill()?;
        }
    }
    let after = {
        let survivors: Vec<(String, &Daemon)> =
            replicas.iter().enumerate().filter_map(|(n, d)| Some((s.identity(n), d.as_ref()?))).collect();
        wait_settled(&s, &survivors).await?
    };
    assert_ne!(after[&0], victim_id, "another replica took the dead one's shard");
    wait_converged(&env, &s, "every change made during the failover to arrive").await?;
    tokio::time::sleep(Duration::from_secs(s.timing.2 * 2)).await;

    let writes = configmap_writes(&s)?;
    // Nothing duplicated: no object written more often than it changed upstream (create + rounds).
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for w in &writes {
        *count.entry((w.namespace.clone().unwrap_or_default(), w.name.clone().unwrap_or_default())).or_default() += 1;
    }
    for (obj, n) in &count {
        assert!(*n <= rounds + 1, "{obj:?} written {n} times for {} upstream versions", rounds + 1);
    }
    // Nothing written by the successor before the dead holder's Lease ran out.
    let successor = &after[&0];
    let last_renew = lease_writes(&s)?
        .into_iter()
        .filter(|w| {
            w.replica() == Some(victim_id.as_str())
                && w.name.as_deref() == Some(&*format!("downsync-{}-shard-0", s.target))
        })
        .map(|w| w.completed)
        .max()
        .context("the victim's renewals of shard 0 in the audit log")?;
    let expiry = last_renew + secs(s.timing.0);
    let first_successor_write: Option<Timestamp> = writes
        .iter()
        .filter(|w| w.replica() == Some(successor.as_str()))
        .filter(|w| w.namespace.as_deref().is_some_and(|ns| s.shard_of(ns) == 0))
        .filter(|w| w.received > last_renew)
        .map(|w| w.received)
        .min();
    let first = first_successor_write.context("the successor wrote the changes of shard 0")?;
    assert!(first >= expiry, "successor {successor} wrote shard 0 at {first}, before the Lease expired at {expiry}");
    // And the dead replica wrote nothing after its death, obviously; nor anyone else shard 0
    // but these two.
    for w in writes.iter().filter(|w| w.namespace.as_deref().is_some_and(|ns| s.shard_of(ns) == 0)) {
        let r = w.replica().unwrap_or_default();
        assert!(r == victim_id || r == successor, "shard 0 written by {r}");
    }
    drop(replicas);
    cleanup(env, &s).await
}

#[tokio::test]
async fn a_fourth_replica_takes_a_fair_share_without_any_object_written_again() -> Result<()> {
    let env = TestEnv::new("ha-join").await?;
    // Four shards: three replicas hold 2+1+1 (or 2+2+0); with a fourth, one each.
    let s = setup(&env, 4, 8, TEST_TIMING);
    create_namespaces(&env.upstream, &s.namespaces).await?;
    create_configmaps(&env.upstream, &s.namespaces, 5).await?;
    let mut replicas: Vec<Daemon> = (0..3).map(|n| s.start(n)).collect::<Result<_>>()?;
    {
        let named: Vec<(String, &Daemon)> = replicas.iter().enumerate().map(|(n, d)| (s.identity(n), d)).collect();
        wait_settled(&s, &named).await?;
    }
    wait_converged(&env, &s, "the initial sync").await?;
    let before = configmap_writes(&s)?.len();
    assert_eq!(before, 40, "each object created once");

    replicas.push(s.start(3)?);
    let named: Vec<(String, &Daemon)> = replicas.iter().enumerate().map(|(n, d)| (s.identity(n), d)).collect();
    let holders = wait_settled(&s, &named).await?;
    assert!(holders.values().any(|h| *h == s.identity(3)), "the newcomer holds a shard: {holders:?}");
    assert!(!held(&replicas[3])?.is_empty());
    // The newcomer synced its shard from its caches: compared, nothing written. Two retry
    // periods for a late write to show.
    tokio::time::sleep(Duration::from_secs(s.timing.2 * 3)).await;
    let after = configmap_writes(&s)?;
    assert_eq!(
        after.len(),
        before,
        "no object written again by the rebalance: {:?}",
        &after[before.min(after.len())..]
    );
    drop(named);
    drop(replicas);
    cleanup(env, &s).await
}

#[tokio::test]
async fn sigterm_hands_the_lease_over_without_waiting_for_it_to_expire() -> Result<()> {
    let env = TestEnv::new("ha-term").await?;
    // One shard (plain leader election, Lease `downsync-<target>`), and a Lease of a minute: a
    // handover that waited for expiry could not happen before the check below gives up.
    let s = setup(&env, 1, 2, (60, 40, 1));
    create_namespaces(&env.upstream, &s.namespaces).await?;
    create_configmaps(&env.upstream, &s.namespaces, 3).await?;
    let mut replicas: Vec<Option<Daemon>> = (0..2).map(|n| s.start(n).map(Some)).collect::<Result<_>>()?;
    let holder = {
        let named: Vec<(String, &Daemon)> =
            replicas.iter().enumerate().filter_map(|(n, d)| Some((s.identity(n), d.as_ref()?))).collect();
        wait_settled(&s, &named).await?[&0].clone()
    };
    wait_converged(&env, &s, "the initial sync").await?;
    let leases: Api<Lease> = Api::namespaced(env.downstream.clone(), &s.lease_namespace);
    let lease_name = format!("downsync-{}", s.target);
    let old = leases.get(&lease_name).await?;
    let old_renew = old.spec.as_ref().and_then(|s| s.renew_time.clone()).context("renewTime")?.0;

    let n = (0..2).find(|&n| s.identity(n) == holder).context("the holder")?;
    let status = replicas[n].take().context("the holder's daemon")?.terminate()?;
    assert!(status.success(), "a SIGTERM'd replica exits 0: {status}");
    let other = s.identity(1 - n);
    let taken = eventually("the other replica to take the Lease", Duration::from_secs(30), || async {
        let l = leases.get(&lease_name).await?;
        let spec = l.spec.unwrap_or_default();
        Ok((spec.holder_identity.as_deref() == Some(other.as_str())).then_some(spec))
    })
    .await?;
    let acquired = taken.acquire_time.context("acquireTime")?.0;
    assert!(
        acquired < old_renew + secs(s.timing.0),
        "taken at {acquired}, not before the old Lease (renewed {old_renew}) would have expired"
    );
    // The new holder writes: a change made now arrives, written by it.
    Api::<ConfigMap>::namespaced(env.upstream.clone(), &s.namespaces[0])
        .patch("cm-0000", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "after"}})))
        .await?;
    wait_converged(&env, &s, "a change after the handover").await?;
    let last = configmap_writes(&s)?.into_iter().last().context("a write")?;
    assert_eq!(last.replica(), Some(other.as_str()));
    drop(replicas);
    cleanup(env, &s).await
}
