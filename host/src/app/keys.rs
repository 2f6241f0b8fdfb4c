//! The queue's keys: one upstream object (by its kind's index and upstream coordinates), or a
//! downstream namespace downsync created, and the key each side's objects stand for.

use kube::ResourceExt;
use kube::api::DynamicObject;

use super::packing::annotation;
use crate::sync::mapping::UPSTREAM_NAMESPACE_ANNOTATION;
use crate::sync::workspaces;

/// One upstream object, by its upstream coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
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
    Object(ObjectKey),
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
    WorkKey::Object(ObjectKey { resource: index, namespace: obj.metadata.namespace.clone(), name: obj.name_any() })
}

/// The key of the upstream object a downstream copy stands for.
pub fn down_key(index: usize, obj: &DynamicObject) -> WorkKey {
    let ns = annotation(obj, UPSTREAM_NAMESPACE_ANNOTATION).or_else(|| obj.metadata.namespace.clone());
    let ns = match (annotation(obj, workspaces::UPSTREAM_CLUSTER_ANNOTATION), ns) {
        (Some(cluster), Some(ns)) => Some(workspaces::qualify_namespace(&cluster, &ns)),
        (_, ns) => ns,
    };
    WorkKey::Object(ObjectKey { resource: index, namespace: ns, name: obj.name_any() })
}
