//! High availability and sharding: replicas coordinate through `coordination.k8s.io/v1` Leases
//! in the downstream cluster, the way client-go's leader election does; a replica writes the
//! objects of a shard only while it holds that shard's Lease.
//!
//! Every replica runs its reflectors (a warm standby). Upstream objects fall into `shards`
//! shards by a stable hash of their upstream namespace (from many kcp workspaces, of the pair
//! (logical cluster, namespace), see [`super::keys::shard_namespace`]); shard `i` is the Lease
//! `downsync-<target>-shard-<i>` (one shard: `downsync-<target>`). Each replica also keeps a
//! member Lease `downsync-<target>-member-<identity>` so that replicas holding no shard are
//! counted too: a replica holds at most `ceil(shards / live replicas)` shards, releases extras
//! when one joins, and takes expired or free shards while it holds fewer.
//!
//! Why the Lease loop is written here rather than taken from a crate: `kube-coordinate` 2.0
//! depends on kube 2, not kube 5; `kube-lease-manager` 0.13 (kube 5) has no renew deadline (a
//! holder whose renewals fail keeps reporting that it leads until a read shows another holder),
//! its standbys sleep until the recorded expiry, so a Lease released on SIGTERM is only taken
//! after the full lease duration instead of about one retry period, and it always acquires a
//! free Lease, which leaves no room for holding at most a fair share of shards. The algorithm
//! below is client-go's: optimistic concurrency on the Lease's resourceVersion; expiry judged
//! by the observer's own clock from when it saw the record change (clock skew between nodes
//! does not matter); the holder stops writing at its renew deadline, before the lease duration
//! lets anyone else in; release clears `holderIdentity`.

//!
//! The rooms: `config` (the `ha:` settings, shard and Lease names), `gate` (which shards this
//! process may write, checked by every write), `view` (metrics and the `/shards` view),
//! `coordinator` (the Lease loop), `leases` (reading them back for `downsync shards`),
//! `verdicts` (one plugin rollout verdict for every replica, decided by the holder of shard 0).

mod config;
mod coordinator;
mod gate;
mod leases;
mod verdicts;
mod view;

pub use config::{
    Error, HA_ROLE_LABEL, HA_TARGET_LABEL, HaConfig, MAX_SHARDS, Result, member_lease_name, shard_lease_name, shard_of,
};
pub use coordinator::{Coordinator, CoordinatorHandle};
pub use gate::{Entered, ShardGate};
pub use leases::{LeaseRow, read_leases};
pub use verdicts::{SharedVerdicts, TRIALS_ANNOTATION, VERDICTS_ANNOTATION};
pub use view::{HaMetrics, HaView, ShardView, SharedView, view_json};
