//! The Leases of a target read back, for `downsync shards`.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::config::{Error, HA_ROLE_LABEL, HA_TARGET_LABEL, Result};

/// One Lease of a target, as `downsync shards` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The Lease.
    pub name: String,
    /// `shard` or `member`.
    pub role: String,
    /// Its holder (empty: released).
    pub holder: String,
    /// When the holder last renewed it (RFC 3339), as the holder's clock wrote it.
    pub renewed: String,
    /// Seconds since that renewal, on this machine's clock (rough: clocks differ).
    pub age_seconds: i64,
    /// Its duration in seconds.
    pub duration_seconds: i64,
}

/// Reads every Lease of `target` in `namespace`: which replica holds which shard, and the
/// replicas alive. Shards first, in order.
pub async fn read_leases(client: Client, namespace: &str, target: &str) -> Result<Vec<LeaseRow>> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let selector = format!("{HA_TARGET_LABEL}={target}");
    let leases = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::Lease { name: format!("{namespace}/(list)"), source: Box::new(e) })?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows: Vec<LeaseRow> = leases
        .items
        .iter()
        .map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            let role = l.labels().get(HA_ROLE_LABEL).cloned().unwrap_or_default();
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            LeaseRow {
                name: l.name_any(),
                role,
                holder: spec.holder_identity.unwrap_or_default(),
                renewed: renewed.map(|t| t.to_string()).unwrap_or_default(),
                age_seconds: renewed.map_or(-1, |t| now.duration_since(t).as_secs()),
                duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
            }
        })
        .collect();
    // Shards by number, then members by name.
    let shard_no = |r: &LeaseRow| r.name.rsplit_once("-shard-").and_then(|(_, n)| n.parse::<u32>().ok());
    rows.sort_by(|a, b| (a.role != "shard", shard_no(a), &a.name).cmp(&(b.role != "shard", shard_no(b), &b.name)));
    Ok(rows)
}
