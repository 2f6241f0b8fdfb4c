//! Who owns what: the stamp (a label and an annotation naming downsync and the sync target, and,
//! for a copy from one of many kcp workspaces, that workspace; only objects carrying it are ever
//! updated or deleted), the metadata the API server owns, and the fields that name an object.

use serde_json::{Map, Value};

use super::config::Ownership;
use super::workspaces::UPSTREAM_CLUSTER_ANNOTATION;

/// Label naming the downsync instance; selects owned objects in watches.
pub const MANAGED_BY_LABEL: &str = "downsync.dev/managed-by";
/// Label naming the sync target.
pub const TARGET_LABEL: &str = "downsync.dev/target";
/// Annotation `identity/target`: the authoritative owner record.
pub const OWNER_ANNOTATION: &str = "downsync.dev/owner";
/// Annotation holding the hash of the desired object last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "downsync.dev/desired-hash";

/// Metadata the API server sets on every object (`metadata.*` keys). Values from upstream mean
/// nothing downstream, so they are never copied there; a write takes them from the live
/// downstream object, or leaves them out. The one list of them in the core.
pub const SERVER_METADATA: [&str; 8] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The fields that say which object this is, as JSON pointers: a rule may not change them, and
/// a write must agree with the live object on them. The one list of them in the core.
pub const IDENTITY_PATHS: [&str; 4] = ["/apiVersion", "/kind", "/metadata/name", "/metadata/namespace"];

/// The owner annotation's value for this configuration.
pub fn owner_value(o: &Ownership) -> String {
    format!("{}/{}", o.identity, o.target)
}

/// The label selector that matches the objects this instance owns.
pub fn owned_selector(o: &Ownership) -> String {
    format!("{MANAGED_BY_LABEL}={},{TARGET_LABEL}={}", o.identity, o.target)
}

fn meta_map<'a>(obj: &'a mut Value, field: &str) -> Option<&'a mut Map<String, Value>> {
    let meta = obj.as_object_mut()?.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let map = meta.as_object_mut()?.entry(field).or_insert_with(|| Value::Object(Map::new()));
    if !map.is_object() {
        *map = Value::Object(Map::new());
    }
    map.as_object_mut()
}

/// Stamps the ownership labels and annotation, and the desired hash. `cluster` is the logical
/// cluster of the upstream object when the upstream serves many kcp workspaces: the stamp then
/// records it too ([`UPSTREAM_CLUSTER_ANNOTATION`]), over whatever a rule left there, so that
/// [`claim`] can tell one workspace's copy from another's. Without it (one workspace, plain
/// Kubernetes) the stamp is what it always was.
pub fn stamp(obj: &mut Value, o: &Ownership, cluster: Option<&str>, desired_hash: &str) {
    if let Some(labels) = meta_map(obj, "labels") {
        labels.insert(MANAGED_BY_LABEL.into(), o.identity.clone().into());
        labels.insert(TARGET_LABEL.into(), o.target.clone().into());
    }
    if let Some(ann) = meta_map(obj, "annotations") {
        ann.insert(OWNER_ANNOTATION.into(), owner_value(o).into());
        ann.insert(DESIRED_HASH_ANNOTATION.into(), desired_hash.into());
        if let Some(cluster) = cluster {
            ann.insert(UPSTREAM_CLUSTER_ANNOTATION.into(), cluster.into());
        }
    }
}

/// Who owns `obj`, per its annotation.
pub fn owner_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?.get(OWNER_ANNOTATION)?.as_str()
}

/// The logical cluster (kcp workspace) a stamped object's upstream object lives in, if it came
/// from many workspaces.
pub fn recorded_cluster(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?.get(UPSTREAM_CLUSTER_ANNOTATION)?.as_str()
}

/// The owner of `obj` as an error message names it: the owner annotation, and the workspace
/// when one is recorded (`east/prod in workspace 2abc9xyz`); `none` when unstamped.
pub fn describe_owner(obj: &Value) -> String {
    match (owner_of(obj), recorded_cluster(obj)) {
        (Some(owner), Some(cluster)) => format!("{owner} in workspace {cluster}"),
        (Some(owner), None) => owner.to_string(),
        (None, _) => "none".to_string(),
    }
}

/// Whose a live downstream object is, seen by this instance writing for the upstream object of
/// logical cluster `cluster` (`None`: one workspace or plain Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Stamped by this instance for this same upstream workspace (or, without workspaces, by
    /// this instance): it may be updated and deleted.
    Ours,
    /// Stamped by this instance for another workspace's object (or for one of many workspaces
    /// when this object has none, or the other way round): never written, not even to adopt it.
    OtherWorkspace,
    /// Unstamped, or stamped by another instance or target: written only to adopt it.
    NotOurs,
}

/// Whose `obj` is (see [`Claim`]): the owner annotation must be this instance's, and the
/// workspace the stamp records must be `cluster`.
pub fn claim(obj: &Value, o: &Ownership, cluster: Option<&str>) -> Claim {
    if owner_of(obj) != Some(owner_value(o).as_str()) {
        Claim::NotOurs
    } else if recorded_cluster(obj) == cluster {
        Claim::Ours
    } else {
        Claim::OtherWorkspace
    }
}

/// Whether this instance owns `obj` for the upstream object of logical cluster `cluster`.
pub fn is_owned(obj: &Value, o: &Ownership, cluster: Option<&str>) -> bool {
    claim(obj, o, cluster) == Claim::Ours
}

/// Whether the update path may write over `obj`: it is ours, or it is not ours and adoption
/// is on. A copy of another workspace's object is never adopted.
pub fn may_write(obj: &Value, o: &Ownership, cluster: Option<&str>) -> bool {
    match claim(obj, o, cluster) {
        Claim::Ours => true,
        Claim::NotOurs => o.adopt,
        Claim::OtherWorkspace => false,
    }
}

/// The desired hash recorded on a downstream object.
pub fn recorded_hash(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?.get(DESIRED_HASH_ANNOTATION)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_ownership(identity: &str) -> Ownership {
        Ownership { identity: identity.into(), target: "ws1".into(), adopt: false }
    }

    fn mk_copy(o: &Ownership, cluster: Option<&str>) -> Value {
        let mut obj = json!({"metadata": {"name": "cm", "namespace": "ds-0123456789abcdef"}});
        stamp(&mut obj, o, cluster, "h1");
        obj
    }

    #[test]
    fn a_stamped_object_is_owned_by_its_stamper_only() {
        let mut obj = json!({"metadata": {"name": "a", "labels": {"app": "x"}}});
        stamp(&mut obj, &mk_ownership("east"), None, "h1");
        assert!(is_owned(&obj, &mk_ownership("east"), None));
        assert!(!is_owned(&obj, &mk_ownership("west"), None));
        assert_eq!(obj["metadata"]["labels"]["app"], "x", "existing labels stay");
        assert_eq!(obj["metadata"]["labels"][MANAGED_BY_LABEL], "east");
        assert_eq!(recorded_hash(&obj), Some("h1"));
    }

    #[test]
    fn an_object_without_the_annotation_is_not_owned() {
        let obj = json!({"metadata": {"name": "a", "labels": {MANAGED_BY_LABEL: "east", TARGET_LABEL: "ws1"}}});
        assert!(!is_owned(&obj, &mk_ownership("east"), None), "labels alone are not proof of ownership");
    }

    #[test]
    fn without_workspaces_the_stamp_is_what_it_always_was_and_old_copies_stay_owned() {
        let o = mk_ownership("east");
        let copy = mk_copy(&o, None);
        assert_eq!(
            copy["metadata"],
            json!({"name": "cm", "namespace": "ds-0123456789abcdef",
                "labels": {MANAGED_BY_LABEL: "east", TARGET_LABEL: "ws1"},
                "annotations": {OWNER_ANNOTATION: "east/ws1", DESIRED_HASH_ANNOTATION: "h1"}})
        );
        // A copy stamped before workspaces were recorded is the same object: still ours.
        let old = json!({"metadata": {"name": "cm", "annotations": {OWNER_ANNOTATION: "east/ws1"}}});
        assert_eq!(claim(&old, &o, None), Claim::Ours);
        assert_eq!(describe_owner(&old), "east/ws1");
    }

    #[test]
    fn one_workspace_never_owns_a_copy_another_workspaces_object_owns() {
        let o = mk_ownership("east");
        let a = mk_copy(&o, Some("2abc9xyz"));
        assert_eq!(recorded_cluster(&a), Some("2abc9xyz"));
        assert_eq!(claim(&a, &o, Some("2abc9xyz")), Claim::Ours);
        // The same downstream name, reached from workspace b: not b's to update or delete.
        assert_eq!(claim(&a, &o, Some("7other00")), Claim::OtherWorkspace);
        assert!(!is_owned(&a, &o, Some("7other00")));
        // Nor from one workspace or plain Kubernetes with the same identity and target, nor the
        // other way round.
        assert_eq!(claim(&a, &o, None), Claim::OtherWorkspace);
        assert_eq!(claim(&mk_copy(&o, None), &o, Some("2abc9xyz")), Claim::OtherWorkspace);
        assert_eq!(describe_owner(&a), "east/ws1 in workspace 2abc9xyz");
    }

    #[test]
    fn adoption_takes_unowned_objects_but_never_another_workspaces_copy() {
        let adopting = Ownership { adopt: true, ..mk_ownership("east") };
        let a = mk_copy(&adopting, Some("2abc9xyz"));
        assert!(may_write(&a, &adopting, Some("2abc9xyz")));
        assert!(!may_write(&a, &adopting, Some("7other00")), "adopt must not take another workspace's copy");
        let unowned = json!({"metadata": {"name": "cm"}});
        assert!(may_write(&unowned, &adopting, Some("7other00")));
        assert!(!may_write(&unowned, &mk_ownership("east"), Some("7other00")), "no adopt, no write");
        let other_instance = mk_copy(&mk_ownership("west"), Some("2abc9xyz"));
        assert_eq!(claim(&other_instance, &adopting, Some("2abc9xyz")), Claim::NotOurs);
    }

    #[test]
    fn the_stamp_records_the_workspace_over_what_a_rule_left() {
        let o = mk_ownership("east");
        let mut obj = json!({"metadata": {"name": "cm", "annotations": {UPSTREAM_CLUSTER_ANNOTATION: "forged"}}});
        stamp(&mut obj, &o, Some("2abc9xyz"), "h1");
        assert_eq!(recorded_cluster(&obj), Some("2abc9xyz"));
    }
}
