//! How the watch caches hold objects: the body as JSON text with the labels and annotations
//! packed into it, `managedFields` reduced to the one compact entry the rules need.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;

use crate::sync::intent::{self, Intent};
use crate::sync::mapping;

pub(super) fn strip_managed_fields(o: &mut DynamicObject) {
    // The largest parts of most objects, and never read: keeping them would double the cache.
    // (kubectl's last-applied record is dropped from the desired object anyway.)
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(mapping::LAST_APPLIED_ANNOTATION);
    }
}

/// Keeps a cached object's body (everything but its metadata) as its JSON text. A
/// `serde_json::Value` tree costs about five times the text (a map entry, a key and a value
/// allocation per field): the two caches of 10,000 objects held 122 MiB of trees at their
/// peak (docs/benchmarks.md, section 4). A reconcile parses the text once; [`body`] reads it.
///
/// The labels and annotations go into the text too, under [`PACKED_METADATA`]: as typed
/// metadata each non-empty map is a B-tree node of about 540 bytes however few its entries,
/// which made them the largest single part of the cached objects (about 15 of 51 MiB at
/// 10,000 objects). The body of a `DynamicObject` never has a `metadata` key of its own (the
/// metadata is its typed field), so the key cannot collide. `types` goes: list items often
/// lack it, and [`super::reconcile::to_value`] takes apiVersion and kind from the resource.
pub(super) fn pack(o: &mut DynamicObject) {
    o.types = None;
    if o.data.is_string() {
        return;
    }
    let mut data = std::mem::take(&mut o.data);
    if let serde_json::Value::Object(body) = &mut data {
        let mut meta = serde_json::Map::new();
        for (field, map) in [("labels", o.metadata.labels.take()), ("annotations", o.metadata.annotations.take())] {
            if let Some(map) = map {
                meta.insert(field.into(), map.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect());
            }
        }
        if !meta.is_empty() {
            body.insert(PACKED_METADATA.into(), serde_json::Value::Object(meta));
        }
    }
    match serde_json::to_string(&data) {
        Ok(mut text) => {
            text.shrink_to_fit();
            o.data = serde_json::Value::String(text);
        }
        // Cannot happen for a tree parsed from JSON (string keys only); keep what there is.
        Err(_) => o.data = data,
    }
}

/// The key in a packed body that holds the object's labels and annotations.
const PACKED_METADATA: &str = "metadata";

/// A cached object's body and its labels and annotations, packed or not (as a JSON map of
/// `labels` and `annotations`, without those it does not have).
pub fn unpack(o: &DynamicObject) -> (serde_json::Value, serde_json::Map<String, serde_json::Value>) {
    let mut meta = serde_json::Map::new();
    for (field, map) in [("labels", &o.metadata.labels), ("annotations", &o.metadata.annotations)] {
        if let Some(map) = map {
            meta.insert(
                field.into(),
                map.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
            );
        }
    }
    let mut body = match &o.data {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        other => other.clone(),
    };
    if let Some(serde_json::Value::Object(packed)) = body.as_object_mut().and_then(|b| b.remove(PACKED_METADATA)) {
        meta.extend(packed);
    }
    (body, meta)
}

/// The body of a cached object, as [`pack`] left it (or as it is, if it was never packed).
pub fn body(o: &DynamicObject) -> serde_json::Value {
    unpack(o).0
}

/// One annotation of a cached object, packed or not. Reads the packed text without building
/// its tree (the fields it does not need are skipped).
pub fn annotation(o: &DynamicObject, name: &str) -> Option<String> {
    if let Some(a) = &o.metadata.annotations {
        return a.get(name).cloned();
    }
    #[derive(serde::Deserialize)]
    struct Packed {
        metadata: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        annotations: Option<std::collections::BTreeMap<String, String>>,
    }
    let text = o.data.as_str()?;
    let packed: Packed = serde_json::from_str(text).ok()?;
    packed.metadata?.annotations?.remove(name)
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
    pack(o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::keys::{WorkKey, down_key};
    use crate::app::reconcile::to_value;
    use crate::sync::mapping::UPSTREAM_NAMESPACE_ANNOTATION;
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
    fn a_packed_object_reads_back_as_it_was() {
        let ar = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        let plain = mk_deployment();
        let mut packed = mk_deployment();
        pack(&mut packed);
        assert!(packed.data.is_string(), "the body is kept as text");
        pack(&mut packed);
        assert_eq!(body(&packed), body(&plain), "packing twice is packing once");
        let value = to_value(&packed, &ar);
        assert_eq!(value, to_value(&plain, &ar));
        assert_eq!(value["spec"]["replicas"], 2);
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        assert_eq!(value["kind"], "Deployment");
        assert_eq!(body(&packed)["status"], json!({"replicas": 2}));
        assert_eq!(packed.metadata.labels, None, "labels are packed");
        assert_eq!(value["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(body(&packed).get("metadata"), None, "the packed metadata is not part of the body");
    }

    #[test]
    fn a_packed_downstream_copy_still_names_its_upstream_namespace() {
        let ar = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        let mut copy = mk_deployment();
        copy.metadata.namespace = Some("tenant-a".into());
        copy.metadata.annotations =
            Some([(UPSTREAM_NAMESPACE_ANNOTATION.to_string(), "a".to_string()), ("note".into(), String::new())].into());
        copy.metadata.labels = Some(Default::default());
        let plain = copy.clone();
        pack(&mut copy);
        assert_eq!(copy.metadata.annotations, None, "annotations are packed");
        assert_eq!(annotation(&copy, UPSTREAM_NAMESPACE_ANNOTATION).as_deref(), Some("a"));
        assert_eq!(annotation(&copy, "absent"), None);
        assert_eq!(annotation(&plain, UPSTREAM_NAMESPACE_ANNOTATION).as_deref(), Some("a"));
        let WorkKey::Object(key) = down_key(0, &copy) else { panic!("an object key") };
        assert_eq!(key.namespace.as_deref(), Some("a"));
        let value = to_value(&copy, &ar);
        assert_eq!(value, to_value(&plain, &ar));
        assert_eq!(value["metadata"]["labels"], json!({}), "an empty map stays an empty map");
        assert_eq!(value["metadata"]["annotations"]["note"], "");
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
        assert_eq!(body(&on)["spec"], body(&off)["spec"], "the object itself is the same");
    }
}
