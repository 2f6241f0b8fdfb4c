//! The queue's keys: one upstream object (by its kind's index and upstream coordinates), or a
//! downstream namespace downsync created, the key each side's objects stand for, and what a
//! key is sharded by.

use kube::ResourceExt;
use kube::api::DynamicObject;

use crate::sync::mapping::UPSTREAM_NAMESPACE_ANNOTATION;
use crate::sync::workspaces;

/// One upstream object, by its upstream coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// Index of its kind in the config's `resources`.
    pub resource: usize,
    /// Upstream namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// A queue key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkKey {
    /// Sync (or delete the copy of) one upstream object.
    Object(UpstreamKey),
    /// Check whether the downstream namespace downsync created for this upstream namespace
    /// can go.
    Namespace {
        /// The downstream namespace.
        downstream: String,
        /// The upstream namespace it stands for.
        upstream: String,
    },
}

/// The key of an upstream object.
pub fn up_key(index: usize, obj: &DynamicObject) -> WorkKey {
    WorkKey::Object(UpstreamKey { resource: index, namespace: obj.metadata.namespace.clone(), name: obj.name_any() })
}

/// The key of the upstream object a downstream copy stands for.
pub fn down_key(index: usize, obj: &DynamicObject) -> WorkKey {
    let annotation = |name: &str| obj.annotations().get(name).cloned();
    let ns = annotation(UPSTREAM_NAMESPACE_ANNOTATION).or_else(|| obj.metadata.namespace.clone());
    let ns = match (annotation(workspaces::UPSTREAM_CLUSTER_ANNOTATION), ns) {
        (Some(cluster), Some(ns)) => Some(workspaces::qualify_namespace(&cluster, &ns)),
        (_, ns) => ns,
    };
    WorkKey::Object(UpstreamKey { resource: index, namespace: ns, name: obj.name_any() })
}

/// What a key is sharded by (see [`super::ha::shard_of`]): its upstream namespace. From many kcp
/// workspaces that is `<logical cluster>/<namespace>` ([`workspaces::qualify_namespace`]), so the
/// shard is chosen from the pair: one workspace's namespaces spread over the shards, and two
/// workspaces' `default` are two namespaces. A plain namespace shards as it always did.
pub fn shard_namespace(key: &WorkKey) -> Option<&str> {
    match key {
        WorkKey::Object(k) => k.namespace.as_deref(),
        WorkKey::Namespace { upstream, .. } => Some(upstream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ha::shard_of;
    use serde_json::json;

    fn mk_object(ns: &str, annotations: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": ns, "annotations": annotations}}))
        .unwrap()
    }

    #[test]
    fn an_upstream_object_and_its_copy_stand_for_one_key_and_one_shard() {
        // Upstream, as the cache holds it (namespace qualified); downstream, the copy's record.
        let up = up_key(0, &mk_object("2abc9xyz/app", json!({})));
        let down = down_key(
            0,
            &mk_object(
                "ds-0123456789abcdef",
                json!({UPSTREAM_NAMESPACE_ANNOTATION: "app", workspaces::UPSTREAM_CLUSTER_ANNOTATION: "2abc9xyz"}),
            ),
        );
        assert_eq!(up, down);
        let cleanup = WorkKey::Namespace { downstream: "ds-0123456789abcdef".into(), upstream: "2abc9xyz/app".into() };
        assert_eq!(shard_of(shard_namespace(&up), 8), shard_of(shard_namespace(&cleanup), 8));
    }

    #[test]
    fn with_many_workspaces_the_shard_is_chosen_by_workspace_and_namespace() {
        let shard = |cluster: &str, ns: &str| {
            let key = up_key(0, &mk_object(&workspaces::qualify_namespace(cluster, ns), json!({})));
            shard_of(shard_namespace(&key), 8)
        };
        // Fifty workspaces' `default`: over the shards, not all on the one `default` has alone.
        let defaults: std::collections::BTreeSet<u32> =
            (0..50).map(|i| shard(&format!("ws{i:02}x"), "default")).collect();
        assert!(defaults.len() >= 6, "fifty workspaces' default on shards {defaults:?}");
        // One workspace's forty namespaces spread too.
        let mut counts = [0u32; 8];
        for n in 0..40 {
            counts[shard("2abc9xyz", &format!("team-{n}")) as usize] += 1;
        }
        assert!(counts.iter().filter(|&&c| c > 0).count() >= 6, "{counts:?}");
        // A plain namespace (one workspace, plain Kubernetes) keeps its shard.
        assert_eq!(shard_of(shard_namespace(&up_key(0, &mk_object("team-a", json!({})))), 8), 6);
    }
}
