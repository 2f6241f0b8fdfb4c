//! What the watch caches keep of an object: no `managedFields` downstream, and upstream the
//! one compact entry the rules need in their place.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;

use crate::sync::intent::{self, Intent};
use crate::sync::mapping;

/// What the watch caches ([`super::cache`]) need not hold of a downstream object: its
/// `managedFields`, kubectl's last-applied record and its type (the kind gives it).
pub(super) fn strip_managed_fields(o: &mut DynamicObject) {
    o.types = None;
    // The largest parts of most objects, and never read: keeping them would double the cache.
    // (kubectl's last-applied record is dropped from the desired object anyway.)
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(mapping::LAST_APPLIED_ANNOTATION);
    }
}

/// For upstream objects: what the rules need of `managedFields` (which fields no client asked
/// for, see [`Intent`]) is computed here, once per object version, and kept in their place as
/// one compact entry; the rest is dropped as downstream. Without `client_intent` (the feature
/// gate) the intent is unknown: every field is enforced.
pub fn compact_managed_fields(o: &mut DynamicObject, client_intent: bool) {
    let intent = match o.metadata.managed_fields.take() {
        Some(entries) if client_intent && !entries.is_empty() => {
            let last_applied = o.metadata.annotations.as_ref().and_then(|a| a.get(intent::LAST_APPLIED_ANNOTATION));
            let sets: Vec<std::borrow::Cow<'_, serde_json::Value>> = entries
                .iter()
                .filter_map(|e| {
                    let set = &e.fields_v1.as_ref()?.0;
                    Some(intent::asked_fields(e.manager.as_deref(), set, last_applied.map(String::as_str)))
                })
                .collect();
            let sets: Vec<&serde_json::Value> = sets.iter().map(AsRef::as_ref).collect();
            let mut meta = serde_json::Map::new();
            for (k, v) in [("labels", &o.metadata.labels), ("annotations", &o.metadata.annotations)] {
                if let Some(v) = v.as_ref().and_then(|v| serde_json::to_value(v).ok()) {
                    meta.insert(k.into(), v);
                }
            }
            if sets.is_empty() {
                Intent::Unknown
            } else {
                Intent::ServerSet(intent::server_set(&sets, &o.data, &serde_json::Value::Object(meta)))
            }
        }
        _ => Intent::Unknown,
    };
    strip_managed_fields(o);
    o.metadata.managed_fields = intent
        .compact_entry()
        .and_then(|entry| serde_json::from_value::<ManagedFieldsEntry>(entry).ok())
        .map(|entry| vec![entry]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::reconcile::to_value;
    use kube::api::ApiResource;
    use serde_json::json;

    fn mk_deployment() -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}, "resourceVersion": "7"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"replicas": 2},
        }))
        .expect("a deployment")
    }

    #[test]
    fn client_intent_is_read_from_managed_fields_only_while_its_gate_is_on() {
        let mk = || {
            let mut d = mk_deployment();
            d.metadata.managed_fields = Some(vec![
                serde_json::from_value(json!({
                    "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}}}}}}},
                }))
                .expect("an entry"),
            ]);
            d
        };
        let ar = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        let (mut on, mut off) = (mk(), mk());
        compact_managed_fields(&mut on, true);
        compact_managed_fields(&mut off, false);
        let intent = |o: &DynamicObject| Intent::of(&to_value(o, &ar));
        assert!(intent(&on).is_known(), "on: what kubectl asked for is known");
        assert!(!intent(&on).requested("/spec/replicas"), "on: the server's default is not enforced");
        assert!(!intent(&off).is_known(), "off: unknown, so every field is enforced");
        assert_eq!(on.data["spec"], off.data["spec"], "the object itself is the same");
    }
}
