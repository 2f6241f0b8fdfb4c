//! Who owns what: the stamp (a label and an annotation naming downsync and the sync target; only
//! objects carrying it are ever updated or deleted), the metadata the API server owns, and the
//! fields that name an object.

use serde_json::{Map, Value};

use super::config::Ownership;

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

/// Stamps the ownership labels and annotation, and the desired hash.
pub fn stamp(obj: &mut Value, o: &Ownership, desired_hash: &str) {
    if let Some(labels) = meta_map(obj, "labels") {
        labels.insert(MANAGED_BY_LABEL.into(), o.identity.clone().into());
        labels.insert(TARGET_LABEL.into(), o.target.clone().into());
    }
    if let Some(ann) = meta_map(obj, "annotations") {
        ann.insert(OWNER_ANNOTATION.into(), owner_value(o).into());
        ann.insert(DESIRED_HASH_ANNOTATION.into(), desired_hash.into());
    }
}

/// Who owns `obj`, per its annotation.
pub fn owner_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?.get(OWNER_ANNOTATION)?.as_str()
}

/// Whether this instance owns `obj`.
pub fn is_owned(obj: &Value, o: &Ownership) -> bool {
    owner_of(obj) == Some(owner_value(o).as_str())
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

    #[test]
    fn a_stamped_object_is_owned_by_its_stamper_only() {
        let mut obj = json!({"metadata": {"name": "a", "labels": {"app": "x"}}});
        stamp(&mut obj, &mk_ownership("east"), "h1");
        assert!(is_owned(&obj, &mk_ownership("east")));
        assert!(!is_owned(&obj, &mk_ownership("west")));
        assert_eq!(obj["metadata"]["labels"]["app"], "x", "existing labels stay");
        assert_eq!(obj["metadata"]["labels"][MANAGED_BY_LABEL], "east");
        assert_eq!(recorded_hash(&obj), Some("h1"));
    }

    #[test]
    fn an_object_without_the_annotation_is_not_owned() {
        let obj = json!({"metadata": {"name": "a", "labels": {MANAGED_BY_LABEL: "east", TARGET_LABEL: "ws1"}}});
        assert!(!is_owned(&obj, &mk_ownership("east")), "labels alone are not proof of ownership");
    }
}
