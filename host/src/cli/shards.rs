//! `downsync shards`: which replica holds which shard, from the Leases in the downstream cluster.

use std::process::ExitCode;

use anyhow::Result;
use downsync::app::RunConfig;

use super::args::ShardsArgs;

/// Prints one row per Lease of the target.
pub(super) async fn show(a: ShardsArgs) -> Result<ExitCode> {
    let mut c = match &a.config {
        Some(path) => RunConfig::from_file(path)?,
        None => RunConfig::default(),
    };
    if a.downstream_kubeconfig.is_some() {
        c.downstream.kubeconfig = a.downstream_kubeconfig;
    }
    if a.downstream_context.is_some() {
        c.downstream.context = a.downstream_context;
    }
    if let Some(t) = a.target {
        c.sync.ownership.target = t;
    }
    let mut ha = c.ha.clone().unwrap_or_default();
    if a.ha_namespace.is_some() {
        ha.namespace = a.ha_namespace;
    }
    let timeout = downsync::app::config::CONNECT_TIMEOUT;
    let ua = downsync::app::startup::user_agent(&c);
    let down = downsync::kube::clients::connect("downstream", &c.downstream, timeout, &ua).await?;
    let (ns, target) = (ha.resolved_namespace(), c.sync.ownership.target.clone());
    let rows = downsync::app::ha::read_leases(down.client, &ns, &target).await?;
    if rows.is_empty() {
        println!("no Leases of target {target} in namespace {ns}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} {:<7} {:<30} {:>9} {:>9}", "LEASE", "ROLE", "HOLDER", "RENEWED", "DURATION");
    for r in rows {
        let holder = if r.holder.is_empty() { "(released)".to_string() } else { r.holder };
        let age = if r.age_seconds < 0 { "-".to_string() } else { format!("{}s ago", r.age_seconds) };
        println!("{:<40} {:<7} {:<30} {:>9} {:>8}s", r.name, r.role, holder, age, r.duration_seconds);
    }
    Ok(ExitCode::SUCCESS)
}
