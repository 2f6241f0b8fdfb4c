//! How an update is sent: the [`Write`] for the configured strategy, built from the object the
//! syncer decided to write.

use serde_json::Value;

use super::config::UpdateStrategy;
use super::ownership::SERVER_METADATA;
use super::pointer;

/// How an update is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// PUT the object (it carries its resourceVersion).
    Replace(Value),
    /// JSON merge patch.
    Merge(Value),
    /// Strategic merge patch.
    Strategic(Value),
    /// Server-side apply.
    Apply {
        /// The applied configuration.
        object: Value,
        /// Field manager.
        field_manager: String,
        /// Force ownership of conflicting fields.
        force: bool,
    },
}

/// The maps whose keys a merge patch must null out when upstream dropped them: a merge patch
/// only adds and changes keys, so a removal has to be spelled out.
const REMOVABLE_MAPS: [&str; 4] = ["/metadata/labels", "/metadata/annotations", "/data", "/binaryData"];

/// The write of `obj` over `existing` (the live object; `null` for a create by server-side
/// apply) under `strategy`.
pub fn write_for(strategy: &UpdateStrategy, existing: &Value, obj: Value) -> Write {
    match strategy {
        UpdateStrategy::Replace => Write::Replace(obj),
        UpdateStrategy::Merge | UpdateStrategy::StrategicMerge => {
            let mut patch = strip_for_patch(obj);
            add_removals(&mut patch, existing, &REMOVABLE_MAPS);
            if matches!(strategy, UpdateStrategy::Merge) { Write::Merge(patch) } else { Write::Strategic(patch) }
        }
        UpdateStrategy::ServerSideApply { field_manager, force } => {
            Write::Apply { object: strip_for_patch(obj), field_manager: field_manager.clone(), force: *force }
        }
    }
}

/// The write of `obj` over `existing` where the `held` fields (JSON pointers) are not
/// downsync's to set (the upstream server filled them in, or a manager the drift policy keeps
/// owns them): server-side apply leaves them out of the applied configuration, so downsync
/// never becomes their manager; the other strategies send their live values, so a PUT does not
/// reset them and a patch does not change them.
pub fn write_holding(strategy: &UpdateStrategy, existing: &Value, mut obj: Value, held: &[String]) -> Write {
    let ssa = matches!(strategy, UpdateStrategy::ServerSideApply { .. });
    // Last first: taking out a list element shifts the later ones.
    for path in held.iter().rev() {
        if ssa {
            pointer::remove(&mut obj, path);
        } else if let Some(live) = existing.pointer(path) {
            // A failure means the object has no place for it: nothing to keep it in.
            let _ = pointer::set(&mut obj, path, live.clone());
        }
    }
    write_for(strategy, existing, obj)
}

/// A patch or applied configuration: status and server-set metadata out, but the
/// resourceVersion stays (when there is one) so that the write is conditional on the object we
/// checked ownership of.
fn strip_for_patch(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in SERVER_METADATA.iter().filter(|f| **f != "resourceVersion") {
                meta.remove(*f);
            }
        }
    }
    obj
}

/// Keys of the maps at `ptrs` that exist in `existing` but not in `write`, as merge-patch nulls.
fn add_removals(patch: &mut Value, existing: &Value, ptrs: &[&str]) {
    for ptr in ptrs {
        let Some(old) = existing.pointer(ptr).and_then(Value::as_object) else { continue };
        let new_keys: Vec<String> =
            patch.pointer(ptr).and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for k in old.keys().filter(|k| !new_keys.contains(k)) {
            let path = format!("{ptr}/{}", pointer::escape(k));
            // Creating intermediates cannot fail here: `ptr` is an object path in `existing`.
            let _ = pointer::set(patch, &path, Value::Null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A preserved object as the syncer hands it over: live server fields and status included.
    fn mk_preserved(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7", "uid": "u",
                         "creationTimestamp": "2024-01-01T00:00:00Z", "managedFields": [{}], "generation": 1},
            "status": {"x": 1}, "data": data})
    }

    #[test]
    fn merge_patches_null_out_keys_removed_upstream() {
        let existing = json!({"metadata": {"labels": {"keep": "1", "gone": "2"}}, "data": {"a": "1", "b": "2"}});
        let mut patch = json!({"metadata": {"labels": {"keep": "1"}}, "data": {"a": "1"}});
        add_removals(&mut patch, &existing, &REMOVABLE_MAPS);
        assert_eq!(patch, json!({"metadata": {"labels": {"keep": "1", "gone": null}}, "data": {"a": "1", "b": null}}));
    }

    #[test]
    fn patches_keep_the_resource_version_and_drop_other_server_fields() {
        let existing = mk_preserved(json!({"a": "1", "old": "2"}));
        let ssa = UpdateStrategy::ServerSideApply { field_manager: "downsync".into(), force: true };
        let Write::Apply { object, field_manager, force } = write_for(&ssa, &existing, mk_preserved(json!({"a": "1"})))
        else {
            panic!("server-side apply writes an apply");
        };
        assert_eq!((field_manager.as_str(), force), ("downsync", true));
        assert_eq!(object["metadata"], json!({"name": "a", "namespace": "ns", "resourceVersion": "7"}));
        assert_eq!(object.get("status"), None);
        assert_eq!(object["data"], json!({"a": "1"}), "an apply leaves removals to field ownership");

        let Write::Merge(patch) = write_for(&UpdateStrategy::Merge, &existing, mk_preserved(json!({"a": "1"}))) else {
            panic!("merge writes a merge patch");
        };
        assert_eq!(patch["metadata"], json!({"name": "a", "namespace": "ns", "resourceVersion": "7"}));
        assert_eq!(patch["data"], json!({"a": "1", "old": null}));
    }

    #[test]
    fn what_upstream_never_asked_for_is_kept_live_or_left_out_under_each_strategy() {
        use crate::sync::intent::{Intent, enforced};
        // Upstream: replicas defaulted by the server (nobody owns it); the image asked for.
        let upstream = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}});
        let intent = Intent::ServerSet(vec!["/spec/replicas".into()]);
        let object = enforced(upstream.clone(), &intent, &upstream);
        assert_eq!(object["spec"].get("replicas"), None, "not enforced");
        // Downstream: an HPA scaled it to 3.
        let mut live = upstream.clone();
        live["spec"]["replicas"] = json!(3);
        live["metadata"]["resourceVersion"] = json!("9");
        let held = ["/spec/replicas".to_string()];
        let ssa = UpdateStrategy::ServerSideApply { field_manager: "downsync".into(), force: false };
        let table: [(UpdateStrategy, Option<Value>); 4] = [
            (UpdateStrategy::Replace, Some(json!(3))),
            (UpdateStrategy::Merge, Some(json!(3))),
            (UpdateStrategy::StrategicMerge, Some(json!(3))),
            (ssa, None),
        ];
        for (strategy, want) in table {
            let sent = match write_holding(&strategy, &live, object.clone(), &held) {
                Write::Replace(o) | Write::Merge(o) | Write::Strategic(o) | Write::Apply { object: o, .. } => o,
            };
            assert_eq!(sent["spec"].get("replicas").cloned(), want, "{strategy:?}");
            assert_eq!(sent["spec"]["template"]["spec"]["containers"][0]["image"], json!("nginx:2"), "{strategy:?}");
        }
    }

    #[test]
    fn replace_sends_the_object_as_it_is() {
        let obj = mk_preserved(json!({"a": "1"}));
        assert_eq!(write_for(&UpdateStrategy::Replace, &Value::Null, obj.clone()), Write::Replace(obj));
    }
}
