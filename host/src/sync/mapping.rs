//! Upstream to downstream placement: the namespace mapping (identity, prefix, or kcp-style
//! hashed names with a locator) and the first transformation every desired object gets.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::desired::object_ref;
use super::workspaces;

/// Annotation on every synced object naming its upstream namespace, so a downstream object
/// leads back to its upstream one whatever the mapping.
pub const UPSTREAM_NAMESPACE_ANNOTATION: &str = "downsync.dev/upstream-namespace";

/// Annotation on a downstream namespace created by downsync: which target and upstream
/// namespace it holds (kcp's `kcp.io/namespace-locator`).
pub const NAMESPACE_LOCATOR_ANNOTATION: &str = "downsync.dev/namespace-locator";

/// `kubectl apply`'s client-side record; never copied downstream.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a label or annotation key is kcp's own: in the `kcp.io` domain or one under it
/// (the `kcp.io/cluster` annotation on every object, the `claimed.internal.apis.kcp.io/...`
/// label on objects an APIExport claims). They record where the object lives in kcp, mean
/// nothing in a physical cluster, and are not copied downstream. Where the object came from
/// travels in downsync's own annotations.
pub fn is_kcp_key(key: &str) -> bool {
    key.split_once('/').is_some_and(|(domain, _)| domain == "kcp.io" || domain.ends_with(".kcp.io"))
}

/// Why a namespace or object cannot be placed downstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The mapped namespace is not a valid name.
    #[error("{object}: field metadata.namespace: upstream namespace {upstream:?} maps to {mapped:?}, {why}")]
    InvalidNamespace {
        /// The object.
        object: String,
        /// Its upstream namespace.
        upstream: String,
        /// What the mapping made of it.
        mapped: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Result of mapping.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How upstream namespaces are named downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum NamespaceMapping {
    /// The same name.
    #[default]
    Identity,
    /// A fixed prefix before the upstream name, such as `ws1-`.
    Prefix {
        /// The prefix.
        prefix: String,
    },
    /// `ds-` and 16 hex digits of sha256(target, namespace), as kcp's syncer does, so that
    /// several upstreams never collide in one downstream cluster. The namespace carries a
    /// locator annotation.
    Hashed,
}

impl NamespaceMapping {
    /// The downstream name of upstream namespace `ns` for sync target `target`.
    ///
    /// A namespace of one of many workspaces (`<cluster>/<namespace>`, see
    /// [`workspaces::qualify_namespace`]) is always hashed per (target, workspace, namespace):
    /// two workspaces' namespaces of one name must not meet downstream.
    pub fn map(&self, target: &str, ns: &str) -> String {
        if let (Some(cluster), plain) = workspaces::split_namespace(ns) {
            return workspaces::hashed_namespace(target, cluster, plain);
        }
        match self {
            Self::Identity => ns.to_string(),
            Self::Prefix { prefix } => format!("{prefix}{ns}"),
            Self::Hashed => {
                let digest = Sha256::digest(format!("{target}\0{ns}").as_bytes());
                let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("ds-{hex}")
            }
        }
    }

    /// The locator a downstream namespace carries.
    pub fn locator(target: &str, ns: &str) -> String {
        if let (Some(cluster), plain) = workspaces::split_namespace(ns) {
            return workspaces::locator(target, cluster, plain);
        }
        json!({"target": target, "namespace": ns}).to_string()
    }
}

fn dns_label_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("which is empty");
    }
    if name.len() > 63 {
        return Some("which is longer than 63 characters");
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    (!(ok_chars && ok_ends)).then_some("which is not a valid namespace name (RFC 1123 label)")
}

/// Places an upstream object downstream: the namespace is mapped, the upstream namespace is
/// recorded, and kubectl's last-applied record and kcp's labels and annotations dropped.
///
/// Nothing else is stripped here: the syncer normalises every desired object it is given
/// (status and server-set metadata out, see
/// [`normalize_desired`](super::desired::normalize_desired)), once, whoever calls it.
pub fn prepare_desired(upstream: Value, mapping: &NamespaceMapping, target: &str) -> Result<Value> {
    let mut desired = upstream;
    let object = object_ref(&desired);
    let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Ok(desired);
    };
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        // kubectl's record of the upstream apply: meaningless downstream, and for a Secret
        // applied with stringData it holds the values in plain text.
        a.remove(LAST_APPLIED_ANNOTATION);
        a.retain(|k, _| !is_kcp_key(k));
    }
    if let Some(l) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        l.retain(|k, _| !is_kcp_key(k));
    }
    let Some(ns) = meta.get("namespace").and_then(Value::as_str).map(str::to_string) else {
        return Ok(desired);
    };
    let mapped = mapping.map(target, &ns);
    if let Some(why) = dns_label_problem(&mapped) {
        return Err(Error::InvalidNamespace { object, upstream: ns, mapped, why });
    }
    meta.insert("namespace".into(), Value::String(mapped));
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(a) = annotations.as_object_mut() {
        let (cluster, plain) = workspaces::split_namespace(&ns);
        a.insert(UPSTREAM_NAMESPACE_ANNOTATION.into(), Value::String(plain.to_string()));
        if let Some(cluster) = cluster {
            a.insert(workspaces::UPSTREAM_CLUSTER_ANNOTATION.into(), Value::String(cluster.to_string()));
        }
    }
    Ok(desired)
}

/// The upstream namespace a downstream object came from: its annotation, or its own
/// namespace when it has none.
pub fn upstream_namespace(downstream: &Value) -> Option<&str> {
    downstream
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(UPSTREAM_NAMESPACE_ANNOTATION))
        .and_then(Value::as_str)
        .or_else(|| downstream.pointer("/metadata/namespace").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::desired::normalize_desired;

    fn mk_upstream(ns: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "cfg", "namespace": ns, "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u-0"}],
                "finalizers": ["downsync.dev/syncer"], "labels": {"app": "web"},
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"stringData\":{\"password\":\"hunter2\"}}"}
            },
            "data": {"k": "v"}
        })
    }

    #[test]
    fn placing_records_the_namespace_and_leaves_normalising_to_the_syncer() {
        let d = prepare_desired(mk_upstream("team-a"), &NamespaceMapping::Identity, "ws1").unwrap();
        assert_eq!(d["metadata"]["uid"], "u-1", "normalising is the syncer's, done once");
        let d = normalize_desired(d);
        let meta = d["metadata"].as_object().unwrap();
        for gone in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "ownerReferences", "finalizers"] {
            assert!(!meta.contains_key(gone), "{gone} must not travel downstream");
        }
        assert_eq!(d["metadata"]["labels"]["app"], "web");
        assert_eq!(d["data"]["k"], "v");
        assert_eq!(d["metadata"]["annotations"][UPSTREAM_NAMESPACE_ANNOTATION], "team-a");
        assert!(!d.to_string().contains("hunter2"), "kubectl's last-applied record never travels");
    }

    #[test]
    fn kcp_labels_and_annotations_stay_upstream_and_look_alikes_travel() {
        let mut up = mk_upstream("team-a");
        up["metadata"]["labels"] = json!({"claimed.internal.apis.kcp.io/TEtS2": "b4Kg2", "app": "web"});
        up["metadata"]["annotations"] = json!({
            "kcp.io/cluster": "2x8b9q", "tenancy.kcp.io/owner": "x",
            "example.com/kcp.io": "keep", "mykcp.io/x": "keep", "app": "keep"
        });
        let d = prepare_desired(up, &NamespaceMapping::Identity, "ws1").unwrap();
        let a = d["metadata"]["annotations"].as_object().unwrap();
        assert!(!a.contains_key("kcp.io/cluster") && !a.contains_key("tenancy.kcp.io/owner"), "{a:?}");
        for kept in ["example.com/kcp.io", "mykcp.io/x", "app"] {
            assert!(a.contains_key(kept), "{kept} is not kcp's: {a:?}");
        }
        assert_eq!(d["metadata"]["labels"], json!({"app": "web"}));
    }

    #[test]
    fn a_namespace_of_one_of_many_workspaces_is_hashed_per_workspace_and_recorded_apart() {
        let q = workspaces::qualify_namespace("2abc9xyz", "team-a");
        for m in [NamespaceMapping::Identity, NamespaceMapping::Hashed] {
            let d = prepare_desired(mk_upstream(&q), &m, "ws1").unwrap();
            assert_eq!(d["metadata"]["namespace"], workspaces::hashed_namespace("ws1", "2abc9xyz", "team-a"));
            assert_eq!(d["metadata"]["annotations"][UPSTREAM_NAMESPACE_ANNOTATION], "team-a");
            assert_eq!(d["metadata"]["annotations"][workspaces::UPSTREAM_CLUSTER_ANNOTATION], "2abc9xyz");
        }
        let other = workspaces::qualify_namespace("7other", "team-a");
        assert_ne!(NamespaceMapping::Hashed.map("ws1", &q), NamespaceMapping::Hashed.map("ws1", &other));
        assert!(NamespaceMapping::locator("ws1", &q).contains("\"cluster\":\"2abc9xyz\""));
    }

    #[test]
    fn prefix_mapping_renames_and_remembers_the_upstream_namespace() {
        let m = NamespaceMapping::Prefix { prefix: "ws1-".into() };
        let d = prepare_desired(mk_upstream("team-a"), &m, "ws1").unwrap();
        assert_eq!(d["metadata"]["namespace"], "ws1-team-a");
        assert_eq!(upstream_namespace(&d), Some("team-a"));
    }

    #[test]
    fn hashed_names_are_stable_valid_and_differ_per_target() {
        let a = NamespaceMapping::Hashed.map("ws1", "team-a");
        assert_eq!(a, NamespaceMapping::Hashed.map("ws1", "team-a"));
        assert_ne!(a, NamespaceMapping::Hashed.map("ws2", "team-a"));
        assert_eq!(dns_label_problem(&a), None, "{a}");
        assert!(a.starts_with("ds-") && a.len() == 19);
    }

    #[test]
    fn a_prefix_that_makes_the_name_too_long_names_the_field() {
        let m = NamespaceMapping::Prefix { prefix: "x".repeat(60) };
        let err = prepare_desired(mk_upstream("team-a"), &m, "ws1").unwrap_err().to_string();
        assert!(err.contains("ConfigMap team-a/cfg") && err.contains("metadata.namespace"), "{err}");
        assert!(err.contains("longer than 63"), "{err}");
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_to_map() {
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1", "uid": "u"}});
        let d = prepare_desired(pv, &NamespaceMapping::Prefix { prefix: "p-".into() }, "ws1").unwrap();
        assert!(d["metadata"].get("namespace").is_none());
        assert!(d["metadata"].get("annotations").is_none());
    }
}
