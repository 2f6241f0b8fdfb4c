//! HA replicas for the tests and the bench: several `downsync run --ha` daemons on one target,
//! their `/shards` views, and upstream namespaces chosen to cover every shard.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use downsync::app::ha::shard_of;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DeleteParams;
use kube::{Api, Client};
use serde_json::Value;

use crate::daemon::{Daemon, cluster_args};
use crate::eventually;

/// Lease timings of a test, as `--ha-timing LEASE,RENEW,RETRY` seconds: short, so that a
/// failover takes seconds, in the same proportions as client-go's 15,10,2.
pub const TEST_TIMING: (u64, u64, u64) = (4, 3, 1);

/// One HA deployment under test: a target, its Lease namespace, its upstream namespaces.
#[derive(Debug, Clone)]
pub struct HaSetup {
    /// The sync target (and the prefix of its Leases).
    pub target: String,
    /// The downstream namespace of the Leases.
    pub lease_namespace: String,
    /// The upstream namespaces synced (identity-mapped downstream).
    pub namespaces: Vec<String>,
    /// The number of shards.
    pub shards: u32,
    /// (lease, renew deadline, retry) in seconds.
    pub timing: (u64, u64, u64),
    /// Extra `downsync run` arguments.
    pub extra: Vec<String>,
}

impl HaSetup {
    /// The replica's identity (also its user agent): `<target>-<n>`.
    pub fn identity(&self, n: usize) -> String {
        format!("{}-r{n}", self.target)
    }

    /// Starts replica `n`.
    pub fn start(&self, n: usize) -> Result<Daemon> {
        let (lease, renew, retry) = self.timing;
        let mut args: Vec<String> = vec!["--resource".into(), "v1/ConfigMap".into()];
        for ns in &self.namespaces {
            args.extend(["--namespace".into(), ns.clone()]);
        }
        args.extend(
            [
                "--target",
                &self.target,
                "--ha",
                "--ha-shards",
                &self.shards.to_string(),
                "--ha-timing",
                &format!("{lease},{renew},{retry}"),
                "--workers",
                "8",
            ]
            .map(String::from),
        );
        args.extend(self.extra.iter().cloned());
        // As a Deployment names its pods and places them: the replica's identity and the
        // Leases' namespace come from the downward API.
        let id = self.identity(n);
        let env = [("POD_NAME", id.as_str()), ("POD_NAMESPACE", self.lease_namespace.as_str())];
        Daemon::start_with_env(&id, &cluster_args()?, &args, Some("info,downsync=debug"), &env)
    }

    /// The shard of an upstream namespace.
    pub fn shard_of(&self, ns: &str) -> u32 {
        shard_of(Some(ns), self.shards)
    }
}

/// `count` upstream namespace names `<prefix>-<k>`, chosen so that every one of `shards`
/// shards gets `count / shards` of them.
pub fn namespaces_over_shards(prefix: &str, shards: u32, count: usize) -> Vec<String> {
    let per = count.div_ceil(shards as usize);
    let mut taken: BTreeMap<u32, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut k = 0;
    while out.len() < count {
        let name = format!("{prefix}-{k}");
        let n = taken.entry(shard_of(Some(&name), shards)).or_default();
        if *n < per {
            *n += 1;
            out.push(name);
        }
        k += 1;
    }
    out
}

/// Creates the upstream namespaces (labelled as test namespaces).
pub async fn create_namespaces(client: &Client, names: &[String]) -> Result<()> {
    for name in names {
        crate::create_namespace(client, name).await?;
    }
    Ok(())
}

/// Deletes namespaces on a cluster (gone already is fine).
pub async fn delete_namespaces(client: &Client, names: &[String]) -> Result<()> {
    for name in names {
        match Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    Ok(())
}

/// A replica's `/shards` view.
pub fn view(d: &Daemon) -> Result<Value> {
    let (code, body) = d.get_path("/shards")?;
    if code != 200 {
        bail!("/shards answered {code}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// The shards a replica holds, from its view.
pub fn held(d: &Daemon) -> Result<BTreeSet<u32>> {
    let v = view(d)?;
    Ok(v["leases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["mine"] == Value::Bool(true))
                .filter_map(|l| l["shard"].as_u64().and_then(|s| u32::try_from(s).ok()))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until every shard is held by exactly one of `replicas` (given with their
/// identities), each sees all of them alive, and none holds more than its fair share; returns
/// the holder of each shard.
pub async fn wait_settled(setup: &HaSetup, replicas: &[(String, &Daemon)]) -> Result<BTreeMap<u32, String>> {
    let fair = setup.shards.div_ceil(u32::try_from(replicas.len()).unwrap_or(1)) as usize;
    eventually("the shards to settle", Duration::from_secs(120), || async {
        let mut holders = BTreeMap::new();
        for (id, d) in replicas {
            // Not serving yet (starting up) counts as not settled.
            let (Ok(v), Ok(mine)) = (view(d), held(d)) else { return Ok(None) };
            let live = v["liveReplicas"].as_array().map_or(0, Vec::len);
            if live != replicas.len() || mine.len() > fair {
                return Ok(None);
            }
            for s in mine {
                if holders.insert(s, id.clone()).is_some() {
                    return Ok(None);
                }
            }
        }
        Ok((holders.len() == setup.shards as usize).then_some(holders))
    })
    .await
}
