//! Builds the object to write downstream from the desired object and the live downstream one.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::ownership::{IDENTITY_PATHS, SERVER_METADATA};
use super::pointer;

/// Annotation listing (sorted, comma-separated) the label keys downsync set last time.
pub const MANAGED_LABELS_ANNOTATION: &str = "downsync.dev/managed-labels";

/// Annotation listing (sorted, comma-separated) the annotation keys downsync set last time.
pub const MANAGED_ANNOTATIONS_ANNOTATION: &str = "downsync.dev/managed-annotations";

/// The most a Secret's or ConfigMap's values may hold, in decoded bytes: 1 MiB, the apiserver's
/// `core.MaxSecretSize` (k8s.io/kubernetes v1.37.2, pkg/apis/core/types.go). How it is counted
/// is in [`check_size`].
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

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
        field: String,
        /// The live value, JSON-encoded (`null` if absent).
        existing: String,
        /// The desired value, JSON-encoded (`null` if absent).
        desired: String,
    },
    /// A preserve pattern is not a valid pointer.
    #[error("invalid preserve pattern")]
    Pattern(#[from] pointer::Error),
    /// A Secret's or ConfigMap's values are over the apiserver's limit; nothing was written.
    #[error("{} holds {size} bytes of data (decoded), over the apiserver's {limit}-byte limit", lowercase_kind(object))]
    TooLarge {
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The bytes its values hold, counted as the apiserver counts them (see [`check_size`]).
        size: usize,
        /// The limit it is over, [`MAX_DATA_BYTES`].
        limit: usize,
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
        match live_meta.get(key) {
            Some(v) => meta.insert(key.to_owned(), v.clone()),
            None => meta.remove(key),
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

/// Rejects a Secret or ConfigMap whose values the apiserver would refuse as too large, before
/// any API call; other kinds pass.
///
/// The rule is the apiserver's, in k8s.io/kubernetes v1.37.2 pkg/apis/core/validation/
/// validation.go: `ValidateSecret` sums `len(value)` over `data`, the decoded bytes (`stringData`
/// was merged into `data` before, overwriting, by `Convert_v1_Secret_To_core_Secret` in
/// pkg/apis/core/v1/conversion.go), and `ValidateConfigMap` sums `len(value)` over
/// `data`, the strings' UTF-8 bytes, and over `binaryData`, decoded; each refuses a total over
/// `core.MaxSecretSize` ([`MAX_DATA_BYTES`]). Keys, metadata and the JSON encoding (base64,
/// escapes) do not count.
///
/// Nothing is checked for the object as a whole, of any kind. Its limits belong to the
/// downstream cluster and are configurable there: the apiserver's request body limit
/// (`MaxRequestBodyBytes`, 3 MiB by default, k8s.io/apiserver pkg/server/config.go) and etcd's
/// request limit (1.5 MiB by default) on the stored object, which is protobuf for built-in
/// kinds, so neither is the size of the JSON we hold. A guess here would either refuse objects
/// the API takes (as measuring the JSON text did: a Secret of 1,040,643 bytes was refused at
/// 1,387,722 bytes of JSON) or add nothing; the API's own refusal comes back as an error that
/// names the object.
pub fn check_size(obj: &Value) -> Result<()> {
    let Some(size) = data_size(obj) else {
        return Ok(());
    };
    if size > MAX_DATA_BYTES {
        return Err(Error::TooLarge { object: describe(obj), size, limit: MAX_DATA_BYTES });
    }
    Ok(())
}

/// The bytes a v1 Secret's or ConfigMap's values hold, as the apiserver counts them; `None`
/// for every other kind. Values that are not strings hold nothing (the API refuses them anyway).
fn data_size(obj: &Value) -> Option<usize> {
    if obj.get("apiVersion").and_then(Value::as_str) != Some("v1") {
        return None;
    }
    let values = |field: &str| obj.get(field).and_then(Value::as_object).into_iter().flatten();
    let strings = |field: &str| values(field).filter_map(|(k, v)| Some((k, v.as_str()?)));
    match obj.get("kind").and_then(Value::as_str)? {
        "Secret" => {
            // The syncer folds stringData into data first; counted here too so that the rule
            // holds for any caller: a stringData key replaces the data key of the same name.
            let string_data = obj.get("stringData").and_then(Value::as_object);
            let replaced = |k: &String| string_data.is_some_and(|sd| sd.contains_key(k));
            let data: usize = strings("data").filter(|(k, _)| !replaced(k)).map(|(_, v)| base64_decoded_len(v)).sum();
            let plain: usize = strings("stringData").map(|(_, v)| v.len()).sum();
            Some(data + plain)
        }
        "ConfigMap" => {
            let data: usize = strings("data").map(|(_, v)| v.len()).sum();
            let binary: usize = strings("binaryData").map(|(_, v)| base64_decoded_len(v)).sum();
            Some(data + binary)
        }
        _ => None,
    }
}

/// The length of base64 text once decoded, the way the apiserver decodes `[]byte` fields (Go's
/// `base64.StdEncoding`: padded, `\r` and `\n` skipped). It measures without decoding; text
/// that is not base64 is the API's to refuse.
fn base64_decoded_len(text: &str) -> usize {
    let significant = || text.bytes().filter(|b| !matches!(b, b'\r' | b'\n'));
    let padding = significant().rev().take_while(|b| *b == b'=').take(2).count();
    (significant().count() - padding) * 3 / 4
}

/// The two annotations downsync keeps for itself; never listed as managed keys.
const BOOKKEEPING: &[&str] = &[MANAGED_LABELS_ANNOTATION, MANAGED_ANNOTATIONS_ANNOTATION];

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
    for ptr in IDENTITY_PATHS {
        let (e, d) = (existing.pointer(ptr), desired.pointer(ptr));
        if e != d {
            let show = |v: Option<&Value>| v.map_or_else(|| "null".to_owned(), Value::to_string);
            return Err(Error::IdentityMismatch {
                object: describe(desired),
                // `/metadata/name` -> `metadata.name`, the API's spelling, for the message.
                field: ptr.trim_start_matches('/').replace('/', "."),
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

/// What the reader compares: no server bookkeeping, no status, no downsync bookkeeping.
pub fn for_display(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_METADATA {
            meta.remove(f);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for f in
                [super::ownership::DESIRED_HASH_ANNOTATION, MANAGED_LABELS_ANNOTATION, MANAGED_ANNOTATIONS_ANNOTATION]
            {
                a.remove(f);
            }
        }
    }
    obj
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
        assert!(matches!(err, Error::IdentityMismatch { ref field, .. } if field == "kind"), "{err:?}");
    }

    #[test]
    fn non_objects_are_rejected() {
        let cm = mk_configmap("cfg", json!({}));
        let opts = PreserveOptions::default();
        assert!(matches!(preserve(&json!([]), &cm, &opts), Err(Error::NotAnObject { side: "existing" })));
        assert!(matches!(preserve(&cm, &json!("x"), &opts), Err(Error::NotAnObject { side: "desired" })));
    }

    fn mk_secret(data: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "blob", "namespace": "ns"},
            "type": "Opaque",
            "data": data
        })
    }

    fn base64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The size `check_size` found, or 0 when it passed the object.
    fn refused_size(obj: &Value) -> usize {
        match check_size(obj) {
            Ok(()) => 0,
            Err(Error::TooLarge { size, limit, .. }) => {
                assert_eq!(limit, MAX_DATA_BYTES);
                size
            }
            Err(e) => panic!("expected TooLarge, got {e:?}"),
        }
    }

    #[test]
    fn a_secret_is_measured_decoded_not_as_json() {
        // The reported object: accepted by the apiserver, 1,387,722 bytes of JSON.
        let reported = mk_secret(json!({"blob": base64(&vec![7; 1_040_643])}));
        assert!(serde_json::to_vec(&reported).unwrap().len() > MAX_DATA_BYTES);
        assert!(check_size(&reported).is_ok());
        let at_limit = mk_secret(json!({"a": base64(&vec![0; MAX_DATA_BYTES - 10]), "b": base64(&[1; 10])}));
        assert!(check_size(&at_limit).is_ok(), "the limit itself is allowed");
        let over = mk_secret(json!({"a": base64(&vec![0; MAX_DATA_BYTES - 10]), "b": base64(&[1; 11])}));
        assert_eq!(refused_size(&over), MAX_DATA_BYTES + 1);
    }

    #[test]
    fn the_refusal_names_object_size_and_limit() {
        let err = check_size(&mk_secret(json!({"blob": base64(&vec![0; MAX_DATA_BYTES + 1])}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret ns/blob holds 1048577 bytes of data (decoded), over the apiserver's 1048576-byte limit"
        );
        assert!(matches!(err, Error::TooLarge { ref object, .. } if object == "Secret ns/blob"));
    }

    #[test]
    fn a_configmap_counts_utf8_bytes_of_data_and_decoded_binary_data() {
        // "é" is two bytes; "\n" is one byte once decoded, two characters of JSON.
        let text = format!("{}{}", "é".repeat(1000), "\n".repeat(1000));
        let mut cm = mk_configmap("cfg", json!({"text": text}));
        cm["binaryData"] = json!({"bin": base64(&vec![0xff; MAX_DATA_BYTES - 3000])});
        assert!(check_size(&cm).is_ok());
        cm["data"]["more"] = json!("x");
        assert_eq!(refused_size(&cm), MAX_DATA_BYTES + 1);
    }

    #[test]
    fn keys_and_metadata_do_not_count() {
        let mut cm = mk_configmap("cfg", json!({"k".repeat(200): "x".repeat(MAX_DATA_BYTES)}));
        cm["metadata"]["annotations"] = json!({"note": "y".repeat(200_000)});
        assert!(check_size(&cm).is_ok());
    }

    #[test]
    fn string_data_counts_and_replaces_the_data_key_it_names() {
        let mut secret = mk_secret(json!({"a": base64(&vec![0; MAX_DATA_BYTES]), "b": base64(b"xy")}));
        secret["stringData"] = json!({"b": "z"});
        assert_eq!(refused_size(&secret), MAX_DATA_BYTES + 1, "b counts once, as its stringData value");
        secret["stringData"] = json!({"a": "tiny"});
        assert!(check_size(&secret).is_ok());
    }

    #[test]
    fn base64_is_measured_as_go_decodes_it() {
        assert_eq!(base64_decoded_len(""), 0);
        assert_eq!(base64_decoded_len("Mg=="), 1);
        assert_eq!(base64_decoded_len("YWI="), 2);
        assert_eq!(base64_decoded_len("YWJj"), 3);
        assert_eq!(base64_decoded_len("YWJj\r\nZA=="), 4, "line breaks are skipped");
    }

    #[test]
    fn other_kinds_are_not_measured() {
        let big = "x".repeat(MAX_DATA_BYTES * 3 / 2);
        let mut crd = mk_configmap("cfg", json!({"big": big}));
        crd["apiVersion"] = json!("example.com/v1");
        assert!(check_size(&crd).is_ok());
        let mut other = mk_configmap("cfg", json!({"big": big}));
        other["kind"] = json!("Widget");
        assert!(check_size(&other).is_ok());
    }
}
