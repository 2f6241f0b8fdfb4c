//! The `ha:` settings, the shard of a namespace, and the names of the Leases.

use serde::{Deserialize, Serialize};

/// Label on every Lease downsync makes: the sync target it coordinates.
pub const HA_TARGET_LABEL: &str = "downsync.dev/ha-target";
/// Label on every Lease downsync makes: `shard` or `member`.
pub const HA_ROLE_LABEL: &str = "downsync.dev/ha-role";

/// Why the HA settings or the Lease loop fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("setting ha.{setting}: {message}")]
    Invalid {
        /// The setting under `ha:`.
        setting: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A Lease request failed.
    #[error("lease {name}: {source}")]
    Lease {
        /// The Lease.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A Lease request did not answer in time.
    #[error("lease {name}: no answer within {seconds}s")]
    Timeout {
        /// The Lease.
        name: String,
        /// The time allowed.
        seconds: u64,
    },
}

/// Result of the Lease loop.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `ha:` section of the config, whose presence turns HA on: `shards`. The replica's name
/// comes from `POD_NAME` (else the host name), the Leases' namespace from `POD_NAMESPACE` (else
/// `default`), and the Lease timings are client-go's; tests shorten them (`--ha-timing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HaConfig {
    /// With the `ha` section given, HA is on (left out, off): upstream namespaces split into this
    /// many shards, each its own Lease; only the holder of a shard's Lease writes its objects.
    pub shards: u32,
    /// This replica's name in the Leases (and its user agent). Unset: `POD_NAME`, else the
    /// host name.
    #[serde(skip)]
    pub identity: Option<String>,
    /// The downstream namespace of the Leases. Unset: `POD_NAMESPACE`, else `default`.
    #[serde(skip)]
    pub namespace: Option<String>,
    /// How long a Lease is valid after its last renewal (client-go: 15).
    #[serde(skip)]
    pub lease_duration_seconds: u64,
    /// A holder that could not renew for this long stops writing (client-go: 10).
    #[serde(skip)]
    pub renew_deadline_seconds: u64,
    /// How often Leases are renewed, and free ones looked for (client-go: 2).
    #[serde(skip)]
    pub retry_period_seconds: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            identity: None,
            namespace: None,
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
            retry_period_seconds: 2,
        }
    }
}

/// The most shards: each is a Lease renewed every retry period.
pub const MAX_SHARDS: u32 = 256;

impl HaConfig {
    /// Checks the settings: 1 <= shards <= [`MAX_SHARDS`], lease > renew deadline > retry >= 1.
    pub fn validate(&self) -> Result<()> {
        let invalid = |setting, message: String| Err(Error::Invalid { setting, message });
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return invalid("shards", format!("{} is out of range: give 1 to {MAX_SHARDS}", self.shards));
        }
        if self.retry_period_seconds == 0 {
            return invalid("retryPeriodSeconds", "must be at least 1".into());
        }
        if self.renew_deadline_seconds <= self.retry_period_seconds {
            return invalid(
                "renewDeadlineSeconds",
                format!(
                    "{} must be more than retryPeriodSeconds ({}): a holder needs more than one try to renew",
                    self.renew_deadline_seconds, self.retry_period_seconds
                ),
            );
        }
        if self.lease_duration_seconds <= self.renew_deadline_seconds {
            return invalid(
                "leaseDurationSeconds",
                format!(
                    "{} must be more than renewDeadlineSeconds ({}): a holder must stop writing before \
                     another replica may take its Lease",
                    self.lease_duration_seconds, self.renew_deadline_seconds
                ),
            );
        }
        if i32::try_from(self.lease_duration_seconds).is_err() {
            return invalid("leaseDurationSeconds", "is too large".into());
        }
        if let Some(id) = &self.identity
            && (id.is_empty() || id.len() > 200)
        {
            return invalid("identity", "must be 1 to 200 characters".into());
        }
        Ok(())
    }

    /// This replica's identity: `ha.identity`, else `POD_NAME`, else the host name.
    pub fn resolved_identity(&self) -> String {
        if let Some(id) = &self.identity {
            return id.clone();
        }
        if let Ok(pod) = std::env::var("POD_NAME")
            && !pod.is_empty()
        {
            return pod;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("downsync-{}", std::process::id()))
    }

    /// The namespace of the Leases: `ha.namespace`, else `POD_NAMESPACE`, else `default`.
    pub fn resolved_namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "default".into())
    }

    pub(super) fn shard_count(&self) -> u32 {
        self.shards.max(1)
    }
}

/// The shard of an upstream namespace (cluster-scoped objects: the empty name): FNV-1a 64 of
/// the name, modulo `shards`. Stable across processes and versions, unlike std's hasher.
pub fn shard_of(namespace: Option<&str>, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.unwrap_or_default().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `shards`, a u32.
    u32::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// The Lease of shard `i`: `downsync-<target>` when there is one shard, else
/// `downsync-<target>-shard-<i>`.
pub fn shard_lease_name(target: &str, shards: u32, i: u32) -> String {
    if shards <= 1 { format!("downsync-{target}") } else { format!("downsync-{target}-shard-{i}") }
}

/// The member Lease of a replica, which says it is alive even when it holds no shard.
pub fn member_lease_name(target: &str, identity: &str) -> String {
    let safe: String =
        identity.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("downsync-{target}-member-{}", safe.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_shard_of_a_namespace_is_stable_and_spread() {
        // Fixed values: a change of hash would move every object to another shard on upgrade.
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            shard_of(Some("a"), u32::MAX),
            u32::try_from(0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)).unwrap()
        );
        assert_eq!((shard_of(Some("team-a"), 8), shard_of(Some("team-b"), 8)), (6, 3));
        assert_eq!(shard_of(None, 8), shard_of(Some(""), 8));
        let mut counts = [0u32; 4];
        for n in 0..400 {
            counts[shard_of(Some(&format!("ns-{n}")), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(shard_of(Some("anything"), 1), 0);
    }

    #[test]
    fn lease_names_follow_the_target() {
        assert_eq!(shard_lease_name("east", 1, 0), "downsync-east");
        assert_eq!(shard_lease_name("east", 4, 3), "downsync-east-shard-3");
        assert_eq!(member_lease_name("east", "Pod_1.x"), "downsync-east-member-pod-1-x");
    }

    #[test]
    fn settings_must_leave_a_holder_time_to_stop_before_others_take_over() {
        let ok = HaConfig::default();
        ok.validate().unwrap();
        let bad = HaConfig { renew_deadline_seconds: 15, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("leaseDurationSeconds"));
        let bad = HaConfig { retry_period_seconds: 10, ..ok.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("renewDeadlineSeconds"));
        let bad = HaConfig { shards: 0, ..ok };
        assert!(bad.validate().unwrap_err().to_string().contains("ha.shards"));
    }
}
