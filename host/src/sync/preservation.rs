//! Builds the object to write downstream from the desired object and the live downstream one.

use std::collections::BTreeSet;
use std::io;

use serde_json::{Map, Value};

use super::pointer;

/// Annotation listing (sorted, comma-separated) the label keys downsync set last time.
pub const MANAGED_LABELS_ANNOTATION: &str = "downsync.dev/managed-labels";

/// Annotation listing (sorted, comma-separated) the annotation keys downsync set last time.
pub const MANAGED_ANNOTATIONS_ANNOTATION: &str = "downsync.dev/managed-annotations";

/// The largest ConfigMap or Secret, in bytes of JSON, that downsync will write.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// Metadata the API server owns: always taken from the live object, never from desired.
pub(crate) const SERVER_METADATA: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The fields that say which object this is, as (field, JSON pointer); desired and existing
/// must agree on them, and no plugin may change them.
pub const IDENTITY: &[(&str, &str)] = &[
    ("apiVersion", "/apiVersion"),
    ("kind", "/kind"),
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
];

/// Why an object could not be prepared for writing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The existing or desired object is not a JSON object.
    #[error("the {side} object is not a json object")]
    NotAnObject {
        /// `existing` or `desired`.
        side: &'static str,
    },
    /// Desired and existing describe different objects.
    #[error("{object}: {field} differs between existing ({existing}) and desired ({desired})")]
    IdentityMismatch {
        /// The desired object, as `Kind namespace/name`.
        object: String,
        /// The field that differs, e.g. `metadata.namespace`.
        field: &'static str,
        /// The live value, JSON-encoded (`null` if absent).
        existing: String,
        /// The desired value, JSON-encoded (`null` if absent).
        desired: String,
    },
    /// A preserve pattern is not a valid pointer.
    #[error("invalid preserve pattern")]
    Pattern(#[from] pointer::Error),
    /// The object is over the API server's size limit for its kind.
    #[error("{} is {size} bytes, over the {limit}-byte limit", lowercase_kind(object))]
    TooLarge {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// Its size as JSON, in bytes.
        size: usize,
        /// The limit it is over.
        limit: usize,
    },
    /// The object could not be serialized to measure it.
    #[error("cannot serialize {object} to measure its size")]
    Encode {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of preservation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tuning for [`preserve`].
#[derive(Debug, Clone, Default)]
pub struct PreserveOptions {
    /// Pointer patterns (with `*` segments) whose downstream values win over desired ones.
    pub preserve: Vec<String>,
}

/// Returns the object to send as a full update (PUT) of `existing`.
///
/// Starts from `desired` and keeps what belongs downstream: server-managed metadata (the
/// resourceVersion makes the PUT conditional), status, finalizers, labels and annotations
/// added downstream, and every path matched by `opts.preserve`.
pub fn preserve(existing: &Value, desired: &Value, opts: &PreserveOptions) -> Result<Value> {
    let Value::Object(live) = existing else {
        return Err(Error::NotAnObject { side: "existing" });
    };
    let mut out = desired.clone();
    let Some(out_map) = out.as_object_mut() else {
        return Err(Error::NotAnObject { side: "desired" });
    };
    check_identity(existing, desired)?;
    let patterns =
        opts.preserve.iter().map(|p| pointer::parse(p).map(|_| p.as_str())).collect::<Result<Vec<_>, _>>()?;

    match live.get("status") {
        Some(status) => out_map.insert("status".to_owned(), status.clone()),
        // downsync never writes status downstream; the downstream controllers own it.
        None => out_map.remove("status"),
    };

    let empty = Map::new();
    let live_meta = live.get("metadata").and_then(Value::as_object).unwrap_or(&empty);
    with_object(out_map, "metadata", |meta| merge_metadata(meta, live_meta));

    for pattern in patterns {
        for path in pointer::expand(existing, pattern) {
            let Some(value) = pointer::get(existing, &path) else {
                continue;
            };
            // A failure means desired has no place for the value (a shorter array, or a
            // scalar where downstream has an object): the field is gone upstream, so
            // there is nothing to keep it in.
            let _ = pointer::set(&mut out, &path, value.clone());
        }
    }
    Ok(out)
}

/// Merges the live metadata into desired's: server-owned fields, owners, finalizers, and the
/// labels and annotations added downstream.
fn merge_metadata(meta: &mut Map<String, Value>, live_meta: &Map<String, Value>) {
    for key in SERVER_METADATA {
        // desired may carry the upstream cluster's values, which mean nothing downstream.
        match live_meta.get(*key) {
            Some(v) => meta.insert((*key).to_owned(), v.clone()),
            None => meta.remove(*key),
        };
    }
    if is_empty_list(meta.get("ownerReferences"))
        && let Some(refs) = live_meta.get("ownerReferences")
    {
        meta.insert("ownerReferences".to_owned(), refs.clone());
    }
    merge_finalizers(meta, live_meta.get("finalizers"));

    let desired_labels = string_keys(meta.get("labels"), &[]);
    let desired_annotations = string_keys(meta.get("annotations"), BOOKKEEPING);
    let live_annotations = live_meta.get("annotations").and_then(Value::as_object);
    let managed_labels = managed_keys(live_annotations, MANAGED_LABELS_ANNOTATION);
    let managed_annotations = managed_keys(live_annotations, MANAGED_ANNOTATIONS_ANNOTATION);
    keep_downstream_keys(meta, "labels", live_meta.get("labels"), &managed_labels, &[]);
    keep_downstream_keys(meta, "annotations", live_meta.get("annotations"), &managed_annotations, BOOKKEEPING);
    record_managed_keys(meta, &desired_labels, &desired_annotations);
}

/// Records in `desired`'s annotations the label and annotation keys it sets, for a create.
///
/// Without this record a later [`preserve`] could not tell a label downsync dropped from
/// one a downstream user added. Does nothing if `desired` is not an object.
pub fn stamp_managed_keys(desired: &mut Value) {
    let Some(obj) = desired.as_object_mut() else {
        return;
    };
    with_object(obj, "metadata", |meta| {
        let labels = string_keys(meta.get("labels"), &[]);
        let annotations = string_keys(meta.get("annotations"), BOOKKEEPING);
        record_managed_keys(meta, &labels, &annotations);
    });
}

/// Rejects ConfigMaps and Secrets the API server would refuse as too large.
pub fn check_size(obj: &Value) -> Result<()> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if api_version != Some("v1") || !matches!(kind, Some("ConfigMap" | "Secret")) {
        return Ok(());
    }
    // Counting instead of collecting avoids allocating the megabytes we are about to reject.
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, obj).map_err(|source| Error::Encode { object: describe(obj), source })?;
    let size = counter.0;
    if size > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge { object: describe(obj), size, limit: MAX_OBJECT_BYTES });
    }
    Ok(())
}

/// The two annotations downsync keeps for itself; never listed as managed keys.
const BOOKKEEPING: &[&str] = &[MANAGED_LABELS_ANNOTATION, MANAGED_ANNOTATIONS_ANNOTATION];

/// A writer that only counts bytes.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Kind namespace/name` (or `Kind name` when cluster-scoped), for messages.
fn describe(obj: &Value) -> String {
    let field = |ptr: &str| obj.pointer(ptr).and_then(Value::as_str);
    let kind = field("/kind").unwrap_or("object");
    let name = field("/metadata/name").unwrap_or("<unnamed>");
    match field("/metadata/namespace") {
        Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {name}"),
    }
}

/// Lowercases the kind in `Kind namespace/name`, which reads better mid-sentence.
fn lowercase_kind(object: &str) -> String {
    match object.split_once(' ') {
        Some((kind, rest)) => format!("{} {rest}", kind.to_lowercase()),
        None => object.to_lowercase(),
    }
}

fn check_identity(existing: &Value, desired: &Value) -> Result<()> {
    for (field, ptr) in IDENTITY {
        let (e, d) = (existing.pointer(ptr), desired.pointer(ptr));
        if e != d {
            let show = |v: Option<&Value>| v.map_or_else(|| "null".to_owned(), Value::to_string);
            return Err(Error::IdentityMismatch {
                object: describe(desired),
                field,
                existing: show(e),
                desired: show(d),
            });
        }
    }
    Ok(())
}

/// Runs `f` on the object under `key`, putting one there first if something else sits there.
///
/// Taking the map out and putting it back avoids holding a borrow into `map` across the
/// "is it an object?" check, so no panicking accessor is needed.
fn with_object<R>(map: &mut Map<String, Value>, key: &str, f: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
    let mut inner = match map.get_mut(key).map(Value::take) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let result = f(&mut inner);
    map.insert(key.to_owned(), Value::Object(inner));
    result
}

fn is_empty_list(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

/// Existing finalizers first, in their order, then desired's new ones; no duplicates.
///
/// Downstream controllers add finalizers to guard their cleanup; dropping them on update
/// would let the object vanish before that cleanup ran.
fn merge_finalizers(meta: &mut Map<String, Value>, live: Option<&Value>) {
    let as_list = |v: Option<&Value>| -> Vec<Value> { v.and_then(Value::as_array).cloned().unwrap_or_default() };
    let live = as_list(live);
    let desired = as_list(meta.get("finalizers"));
    if live.is_empty() && desired.is_empty() {
        return;
    }
    let mut merged: Vec<Value> = Vec::with_capacity(live.len() + desired.len());
    for f in live.into_iter().chain(desired) {
        if !merged.contains(&f) {
            merged.push(f);
        }
    }
    meta.insert("finalizers".to_owned(), Value::Array(merged));
}

/// The keys of a string map, leaving out `skip`.
fn string_keys(map: Option<&Value>, skip: &[&str]) -> BTreeSet<String> {
    map.and_then(Value::as_object)
        .map(|m| m.keys().filter(|k| !skip.contains(&k.as_str())).cloned().collect())
        .unwrap_or_default()
}

/// The keys listed in one of the managed-* annotations; empty when it is absent.
fn managed_keys(annotations: Option<&Map<String, Value>>, which: &str) -> BTreeSet<String> {
    annotations
        .and_then(|a| a.get(which))
        .and_then(Value::as_str)
        .map(|list| list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Adds to `meta[field]` the live keys downsync never managed (they were added downstream).
///
/// Keys in `managed` that desired no longer sets are left out, which removes them on PUT.
fn keep_downstream_keys(
    meta: &mut Map<String, Value>,
    field: &str,
    live: Option<&Value>,
    managed: &BTreeSet<String>,
    skip: &[&str],
) {
    let Some(live) = live.and_then(Value::as_object) else {
        return;
    };
    let kept: Vec<(&String, &Value)> =
        live.iter().filter(|(k, _)| !skip.contains(&k.as_str()) && !managed.contains(*k)).collect();
    if kept.is_empty() {
        return;
    }
    with_object(meta, field, |target| {
        for (k, v) in kept {
            if !target.contains_key(k) {
                target.insert(k.clone(), v.clone());
            }
        }
    });
}

/// Writes the two managed-* annotations; an empty set is written as `""` so it still counts.
fn record_managed_keys(meta: &mut Map<String, Value>, labels: &BTreeSet<String>, annotations: &BTreeSet<String>) {
    let list = |keys: &BTreeSet<String>| Value::String(keys.iter().map(String::as_str).collect::<Vec<_>>().join(","));
    with_object(meta, "annotations", |target| {
        target.insert(MANAGED_LABELS_ANNOTATION.to_owned(), list(labels));
        target.insert(MANAGED_ANNOTATIONS_ANNOTATION.to_owned(), list(annotations));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_configmap(name: &str, data: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns"},
            "data": data
        })
    }

    fn mk_service(ports: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"type": "NodePort", "ports": ports}
        })
    }

    fn with_meta(mut obj: Value, key: &str, value: Value) -> Value {
        obj["metadata"][key] = value;
        obj
    }

    /// The object as the API server stored it after a create by downsync.
    fn mk_live(desired: &Value) -> Value {
        let mut live = desired.clone();
        stamp_managed_keys(&mut live);
        let meta = live["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!("4711"));
        meta.insert("uid".into(), json!("downstream-uid"));
        meta.insert("creationTimestamp".into(), json!("2024-01-01T00:00:00Z"));
        live
    }

    fn preserve_default(existing: &Value, desired: &Value) -> Value {
        preserve(existing, desired, &PreserveOptions::default()).unwrap()
    }

    #[test]
    fn labels_added_downstream_survive() {
        let desired = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web"}));
        let mut live = mk_live(&desired);
        live["metadata"]["labels"]["team"] = json!("ops");
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "team": "ops"}));
        assert_eq!(out["metadata"]["annotations"][MANAGED_LABELS_ANNOTATION], json!("app"));
    }

    #[test]
    fn labels_removed_upstream_are_removed_downstream() {
        let first = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web", "tier": "fe"}));
        let mut live = mk_live(&first);
        live["metadata"]["labels"]["team"] = json!("ops");
        let desired = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web"}));
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "team": "ops"}));
    }

    #[test]
    fn desired_label_values_win_over_downstream_edits() {
        let desired = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web"}));
        let mut live = mk_live(&desired);
        live["metadata"]["labels"]["app"] = json!("hacked");
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    }

    #[test]
    fn all_labels_removed_upstream_uses_the_empty_record() {
        let first = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web"}));
        let live = mk_live(&first);
        let desired = mk_configmap("cfg", json!({}));
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"].get("labels"), None);
        assert_eq!(out["metadata"]["annotations"][MANAGED_LABELS_ANNOTATION], json!(""));
        // The empty record must keep a downstream label added after this write.
        let mut later = out.clone();
        later["metadata"]["labels"] = json!({"team": "ops"});
        let again = preserve_default(&later, &desired);
        assert_eq!(again["metadata"]["labels"], json!({"team": "ops"}));
    }

    #[test]
    fn annotations_follow_the_same_rule_and_skip_bookkeeping_keys() {
        let first = with_meta(mk_configmap("cfg", json!({})), "annotations", json!({"a": "1", "b": "2"}));
        let mut live = mk_live(&first);
        assert_eq!(live["metadata"]["annotations"][MANAGED_ANNOTATIONS_ANNOTATION], json!("a,b"));
        live["metadata"]["annotations"]["ops/note"] = json!("keep me");
        let desired = with_meta(mk_configmap("cfg", json!({})), "annotations", json!({"a": "1", "c": "3"}));
        let out = preserve_default(&live, &desired);
        assert_eq!(
            out["metadata"]["annotations"],
            json!({
                "a": "1",
                "c": "3",
                "ops/note": "keep me",
                MANAGED_LABELS_ANNOTATION: "",
                MANAGED_ANNOTATIONS_ANNOTATION: "a,c"
            })
        );
    }

    #[test]
    fn without_a_record_every_downstream_key_is_kept() {
        let desired = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"app": "web"}));
        let live = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"old": "x"}));
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "old": "x"}));
    }

    #[test]
    fn stamp_managed_keys_records_sorted_keys() {
        let mut obj = with_meta(mk_configmap("cfg", json!({})), "labels", json!({"z": "1", "a": "2"}));
        obj["metadata"]["annotations"] = json!({"note": "x", MANAGED_LABELS_ANNOTATION: "stale"});
        stamp_managed_keys(&mut obj);
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(ann[MANAGED_LABELS_ANNOTATION], json!("a,z"));
        assert_eq!(ann[MANAGED_ANNOTATIONS_ANNOTATION], json!("note"));
    }

    #[test]
    fn finalizers_added_downstream_kept() {
        let desired = with_meta(mk_configmap("cfg", json!({})), "finalizers", json!(["up/a", "up/b"]));
        let live = with_meta(mk_live(&desired), "finalizers", json!(["down/x", "up/a"]));
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["finalizers"], json!(["down/x", "up/a", "up/b"]));
    }

    #[test]
    fn status_kept_and_desired_status_dropped() {
        let mut desired = mk_service(json!([{"port": 80}]));
        desired["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}});
        let mut live = mk_live(&mk_service(json!([{"port": 80}])));
        let out = preserve_default(&live, &desired);
        assert_eq!(out.get("status"), None);
        live["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}});
        let out = preserve_default(&live, &desired);
        assert_eq!(out["status"], live["status"]);
    }

    #[test]
    fn resource_version_copied_and_upstream_server_fields_replaced() {
        let mut desired = mk_configmap("cfg", json!({}));
        desired["metadata"]["resourceVersion"] = json!("upstream-1");
        desired["metadata"]["uid"] = json!("upstream-uid");
        desired["metadata"]["generation"] = json!(9);
        let live = mk_live(&mk_configmap("cfg", json!({})));
        let out = preserve_default(&live, &desired);
        assert_eq!(out["metadata"]["resourceVersion"], json!("4711"));
        assert_eq!(out["metadata"]["uid"], json!("downstream-uid"));
        assert_eq!(out["metadata"]["creationTimestamp"], json!("2024-01-01T00:00:00Z"));
        assert_eq!(out["metadata"].get("generation"), None);
    }

    #[test]
    fn owner_references_copied_only_when_desired_has_none() {
        let live_refs = json!([{"kind": "Foo", "name": "down", "uid": "1"}]);
        let live = with_meta(mk_live(&mk_configmap("cfg", json!({}))), "ownerReferences", live_refs.clone());
        let out = preserve_default(&live, &mk_configmap("cfg", json!({})));
        assert_eq!(out["metadata"]["ownerReferences"], live_refs);
        let own = json!([{"kind": "Bar", "name": "up", "uid": "2"}]);
        let desired = with_meta(mk_configmap("cfg", json!({})), "ownerReferences", own.clone());
        assert_eq!(preserve_default(&live, &desired)["metadata"]["ownerReferences"], own);
    }

    #[test]
    fn preserve_path_copies_node_port_per_port_with_wildcard() {
        let desired = mk_service(json!([
            {"name": "http", "port": 80},
            {"name": "https", "port": 443, "nodePort": 31443}
        ]));
        let mut live = mk_live(&desired);
        live["spec"]["ports"][0]["nodePort"] = json!(30080);
        live["spec"]["ports"][1]["nodePort"] = json!(30443);
        live["spec"]["clusterIP"] = json!("10.96.0.10");
        let opts = PreserveOptions { preserve: vec!["/spec/ports/*/nodePort".into(), "/spec/clusterIP".into()] };
        let out = preserve(&live, &desired, &opts).unwrap();
        assert_eq!(out["spec"]["ports"][0]["nodePort"], json!(30080));
        assert_eq!(out["spec"]["ports"][1]["nodePort"], json!(30443));
        assert_eq!(out["spec"]["clusterIP"], json!("10.96.0.10"));
        assert_eq!(out["spec"]["ports"][1]["port"], json!(443));
    }

    #[test]
    fn preserve_keeps_desired_where_downstream_has_nothing_or_no_room() {
        let desired = mk_service(json!([{"name": "http", "port": 80, "nodePort": 31000}]));
        let mut live = mk_live(&mk_service(json!([{"name": "http", "port": 80}, {"name": "x", "port": 81}])));
        live["spec"]["ports"][1]["nodePort"] = json!(30081);
        let opts = PreserveOptions { preserve: vec!["/spec/ports/*/nodePort".into(), "/spec/clusterIP".into()] };
        let out = preserve(&live, &desired, &opts).unwrap();
        assert_eq!(out["spec"]["ports"], desired["spec"]["ports"]);
        assert_eq!(out["spec"].get("clusterIP"), None);
    }

    #[test]
    fn invalid_preserve_pattern_is_an_error() {
        let cm = mk_configmap("cfg", json!({}));
        let opts = PreserveOptions { preserve: vec!["spec/clusterIP".into()] };
        assert!(matches!(preserve(&cm, &cm, &opts), Err(Error::Pattern(_))));
    }

    #[test]
    fn binary_data_survives_and_moving_a_key_out_of_data_removes_it() {
        let first = mk_configmap("cfg", json!({"a": "1", "b": "2"}));
        let live = mk_live(&first);
        let mut desired = mk_configmap("cfg", json!({"a": "1"}));
        desired["binaryData"] = json!({"b": "Mg=="});
        let out = preserve_default(&live, &desired);
        assert_eq!(out["data"], json!({"a": "1"}));
        assert_eq!(out["binaryData"], json!({"b": "Mg=="}));
        let again = preserve_default(&mk_live(&out), &desired);
        assert_eq!(again["binaryData"], json!({"b": "Mg=="}));
    }

    #[test]
    fn mismatched_identity_is_an_error_naming_object_and_field() {
        let live = mk_configmap("cfg", json!({}));
        let mut desired = live.clone();
        desired["metadata"]["namespace"] = json!("other");
        let err = preserve(&live, &desired, &PreserveOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ConfigMap other/cfg"), "{msg}");
        assert!(msg.contains("metadata.namespace"), "{msg}");
        let mut kind = live.clone();
        kind["kind"] = json!("Secret");
        let err = preserve(&live, &kind, &PreserveOptions::default()).unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { field: "kind", .. }));
    }

    #[test]
    fn non_objects_are_rejected() {
        let cm = mk_configmap("cfg", json!({}));
        let opts = PreserveOptions::default();
        assert!(matches!(preserve(&json!([]), &cm, &opts), Err(Error::NotAnObject { side: "existing" })));
        assert!(matches!(preserve(&cm, &json!("x"), &opts), Err(Error::NotAnObject { side: "desired" })));
    }

    #[test]
    fn size_check_rejects_a_large_configmap_naming_it() {
        let big = "x".repeat(MAX_OBJECT_BYTES * 3 / 2);
        let cm = mk_configmap("cfg", json!({"big": big}));
        let err = check_size(&cm).unwrap_err();
        let Error::TooLarge { ref object, size, limit } = err else {
            panic!("expected TooLarge, got {err:?}");
        };
        assert_eq!(object, "ConfigMap ns/cfg");
        assert_eq!(size, serde_json::to_vec(&cm).unwrap().len());
        assert_eq!(limit, MAX_OBJECT_BYTES);
        let msg = err.to_string();
        assert!(msg.starts_with("configmap ns/cfg is "), "{msg}");
        assert!(msg.ends_with("over the 1048576-byte limit"), "{msg}");
    }

    #[test]
    fn size_check_passes_small_objects_and_other_kinds() {
        assert!(check_size(&mk_configmap("cfg", json!({"a": "1"}))).is_ok());
        let big = "x".repeat(MAX_OBJECT_BYTES * 3 / 2);
        let mut secret = mk_configmap("s", json!({"big": big}));
        secret["kind"] = json!("Secret");
        assert!(matches!(check_size(&secret), Err(Error::TooLarge { .. })));
        let mut crd = secret.clone();
        crd["apiVersion"] = json!("example.com/v1");
        assert!(check_size(&crd).is_ok());
    }
}
