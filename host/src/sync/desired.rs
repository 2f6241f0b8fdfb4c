//! The desired object as the syncer takes it in: normalised (what never travels downstream
//! taken out), hashed for no-op detection, and named for messages.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ownership::SERVER_METADATA;
use super::workspaces::UPSTREAM_CLUSTER_ANNOTATION;

/// Beyond the server-set metadata, these come from the upstream object and mean nothing
/// downstream.
const UPSTREAM_ONLY: [&str; 3] = ["ownerReferences", "finalizers", "generateName"];

/// Strips what must never travel downstream: upstream-only metadata (ownerReferences point
/// at upstream uids, upstream finalizers have no controller downstream) and status. A Secret's
/// `stringData` is folded into `data`, as the apiserver would, so the differ compares like
/// with like.
pub fn normalize_desired(mut desired: Value) -> Value {
    let is_secret = str_at(&desired, "/kind") == Some("Secret") && str_at(&desired, "/apiVersion") == Some("v1");
    if let Some(obj) = desired.as_object_mut() {
        obj.remove("status");
        if is_secret {
            fold_string_data(obj);
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in SERVER_METADATA.iter().chain(&UPSTREAM_ONLY) {
                meta.remove(*f);
            }
        }
    }
    desired
}

/// Moves `stringData` into `data`, base64-encoded; a key in both takes the `stringData` value,
/// as the apiserver does.
fn fold_string_data(secret: &mut Map<String, Value>) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = secret.remove("stringData") else { return };
    let data = secret.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            if let Some(text) = v.as_str() {
                data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
            }
        }
    }
}

/// Hash of a normalised desired object plus the rules' fingerprint. Map keys are hashed in
/// sorted order, so the hash does not depend on the order fields arrived in (serde_json keeps
/// insertion order, which is what keeps its small maps small).
pub fn desired_hash(normalized: &Value, rules_fingerprint: &str) -> String {
    let mut h = Sha256::new();
    feed_canonical(&mut h, normalized);
    h.update([0]);
    h.update(rules_fingerprint.as_bytes());
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn feed_canonical(h: &mut Sha256, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            h.update(b"{");
            for k in keys {
                feed_json(h, k);
                h.update(b":");
                if let Some(child) = map.get(k) {
                    feed_canonical(h, child);
                }
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                feed_canonical(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        scalar => feed_json(h, scalar),
    }
}

/// Feeds the compact JSON text of `v` to the hasher as it is written, the same bytes as
/// `to_string()` without the string: every key and scalar of every object hashed went through
/// an allocation (two for a key) before, about a tenth of a restart's CPU (docs/benchmarks.md).
fn feed_json<T: serde::Serialize + ?Sized>(h: &mut Sha256, v: &T) {
    struct Feed<'a>(&'a mut Sha256);
    impl std::io::Write for Feed<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Writing a string or a JSON scalar into a hasher cannot fail.
    let _ = serde_json::to_writer(Feed(h), v);
}

/// A digest of what an object holds, as downstream stores it: everything but its status and
/// the server's bookkeeping ([`SERVER_METADATA`]). Two reads with the same digest differ at
/// most in status, resourceVersion, generation or managedFields.
pub fn content_digest(obj: &Value) -> u64 {
    let mut h = Sha256::new();
    if let Value::Object(map) = obj {
        let mut keys: Vec<&String> = map.keys().filter(|k| *k != "status").collect();
        keys.sort_unstable();
        for k in keys {
            h.update(k.as_bytes());
            h.update(b":");
            match (k.as_str(), map.get(k)) {
                ("metadata", Some(Value::Object(meta))) => {
                    let mut mk: Vec<&String> = meta.keys().filter(|k| !SERVER_METADATA.contains(&k.as_str())).collect();
                    mk.sort_unstable();
                    for k in mk {
                        h.update(k.as_bytes());
                        h.update(b"=");
                        if let Some(v) = meta.get(k) {
                            feed_canonical(&mut h, v);
                        }
                    }
                }
                (_, Some(v)) => feed_canonical(&mut h, v),
                (_, None) => {}
            }
            h.update(b",");
        }
    } else {
        feed_canonical(&mut h, obj);
    }
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// `Kind namespace/name` of an object, as far as it has them, for messages and the explain
/// record. An object placed from one of many kcp workspaces (it records
/// [`UPSTREAM_CLUSTER_ANNOTATION`]) is named with its workspace too:
/// `ConfigMap ds-…/cm (kcp workspace 2abc9xyz)`, since its downstream namespace does not say.
pub fn object_ref(obj: &Value) -> String {
    let kind = str_at(obj, "/kind").unwrap_or("<no kind>");
    let name = str_at(obj, "/metadata/name").unwrap_or("<no name>");
    let mut out = match str_at(obj, "/metadata/namespace") {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    if let Some(cluster) = obj.pointer("/metadata/annotations").and_then(|a| a.get(UPSTREAM_CLUSTER_ANNOTATION)) {
        out.push_str(&format!(" (kcp workspace {})", cluster.as_str().unwrap_or("?")));
    }
    out
}

/// The string at a JSON pointer, if there is one.
pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_configmap(name: &str, meta: Value, data: Value) -> Value {
        let mut metadata = json!({"name": name});
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), meta.as_object()) {
            m.extend(extra.clone());
        }
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    }

    /// The canonical text as it was first hashed: keys and scalars through `to_string()`. The
    /// hashes are stamped on downstream objects, so they must never change.
    fn mk_reference_hash(v: &Value, fingerprint: &str) -> String {
        fn feed(out: &mut String, v: &Value) {
            match v {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort_unstable();
                    out.push('{');
                    for k in keys {
                        out.push_str(&Value::from(k.as_str()).to_string());
                        out.push(':');
                        feed(out, &map[k.as_str()]);
                        out.push(',');
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for item in items {
                        feed(out, item);
                        out.push(',');
                    }
                    out.push(']');
                }
                scalar => out.push_str(&scalar.to_string()),
            }
        }
        let mut text = String::new();
        feed(&mut text, v);
        let mut h = Sha256::new();
        h.update(text.as_bytes());
        h.update([0]);
        h.update(fingerprint.as_bytes());
        h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_desired_hash_is_the_hash_of_the_canonical_text_it_always_was() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a\"b", "labels": {"é": "ü\n", "z": ""}},
                   "data": {"k": "v\u{1}\t/"}, "immutable": true}),
            json!({"spec": {"replicas": 3, "ratio": 0.25, "big": 18446744073709551615u64, "neg": -7, "none": null,
                   "ports": [{"port": 80}, [], {}], "empty": ""}}),
            json!("scalar"),
            json!(null),
        ];
        for o in &objects {
            assert_eq!(desired_hash(o, "rules|intent:x"), mk_reference_hash(o, "rules|intent:x"), "{o}");
        }
    }

    #[test]
    fn normalizing_strips_upstream_only_metadata_and_status() {
        let mut d = mk_configmap(
            "a",
            json!({"uid": "u", "resourceVersion": "9", "ownerReferences": [{}], "finalizers": ["x"], "labels": {"k": "v"}}),
            json!({"a": "b"}),
        );
        d["status"] = json!({"phase": "x"});
        let n = normalize_desired(d);
        assert_eq!(
            n,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"k": "v"}}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn normalizing_folds_a_secrets_string_data_into_data() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "z", "c": "w"}});
        let n = normalize_desired(s);
        assert_eq!(n["data"], json!({"a": "eA==", "b": "eg==", "c": "dw=="}), "stringData wins, as on the apiserver");
        assert_eq!(n.get("stringData"), None);
    }

    #[test]
    fn the_desired_hash_ignores_upstream_noise_but_not_content_or_rules() {
        let a = normalize_desired(mk_configmap("a", json!({"resourceVersion": "1"}), json!({"x": "1"})));
        let b = normalize_desired(mk_configmap("a", json!({"resourceVersion": "2"}), json!({"x": "1"})));
        let c = normalize_desired(mk_configmap("a", json!({}), json!({"x": "2"})));
        assert_eq!(desired_hash(&a, ""), desired_hash(&b, ""));
        assert_ne!(desired_hash(&a, ""), desired_hash(&c, ""));
        assert_ne!(desired_hash(&a, ""), desired_hash(&a, "plugin@sha"));
        let reordered: Value = serde_json::from_str(
            r#"{"data": {"x": "1"}, "metadata": {"name": "a"}, "kind": "ConfigMap", "apiVersion": "v1"}"#,
        )
        .unwrap();
        assert_eq!(desired_hash(&a, ""), desired_hash(&reordered, ""), "field order does not matter");
    }

    #[test]
    fn the_content_digest_sees_content_and_not_status_or_bookkeeping() {
        let a = mk_configmap("a", json!({"resourceVersion": "1", "managedFields": [{"m": 1}]}), json!({"x": "1"}));
        let mut b = mk_configmap("a", json!({"resourceVersion": "2", "generation": 4}), json!({"x": "1"}));
        b["status"] = json!({"ready": true});
        assert_eq!(content_digest(&a), content_digest(&b));
        let c = mk_configmap("a", json!({"resourceVersion": "1", "labels": {"l": "v"}}), json!({"x": "1"}));
        let d = mk_configmap("a", json!({"resourceVersion": "1"}), json!({"x": "2"}));
        assert_ne!(content_digest(&a), content_digest(&c), "a label is content");
        assert_ne!(content_digest(&a), content_digest(&d));
    }

    #[test]
    fn object_refs_name_what_is_there() {
        assert_eq!(object_ref(&mk_configmap("a", json!({"namespace": "ns"}), json!({}))), "ConfigMap ns/a");
        assert_eq!(object_ref(&json!({"kind": "Namespace", "metadata": {"name": "x"}})), "Namespace x");
        assert_eq!(object_ref(&json!([])), "<no kind> <no name>");
        let from_a_workspace = mk_configmap(
            "a",
            json!({"namespace": "ds-0123456789abcdef", "annotations": {UPSTREAM_CLUSTER_ANNOTATION: "2abc9xyz"}}),
            json!({}),
        );
        assert_eq!(object_ref(&from_a_workspace), "ConfigMap ds-0123456789abcdef/a (kcp workspace 2abc9xyz)");
    }
}
