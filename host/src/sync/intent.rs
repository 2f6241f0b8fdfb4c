//! What a client asked for upstream: the fields of an object that some field manager owns,
//! told apart from those the server filled in (defaulted or allocated), from `managedFields`.
//!
//! The apiserver records in `metadata.managedFields` the fields each client (field manager)
//! set. A field present in the object that no manager owns was filled in by the server: a
//! Service's allocated `clusterIP`, a `nodePort` nobody asked for. Rules use this to keep a
//! requested `nodePort` and drop an allocated one.
//!
//! `managedFields` is large (often the largest part of an object) and the upstream cache
//! drops it. [`Intent::compact_entry`] is what the cache keeps in its place: one entry that
//! lists the server-set pointers, usually none or a handful. [`Intent::of`] reads either form.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::pointer;

/// The `fieldsType` of the compact entry that replaces `managedFields` in a cache.
pub const COMPACT_FIELDS_TYPE: &str = "downsync.dev/server-set";

/// Top-level fields that are not the user's to ask for: identity, server metadata and status.
/// Of `metadata`, only labels and annotations are looked at.
const NOT_INTENT: [&str; 4] = ["apiVersion", "kind", "metadata", "status"];

/// Which fields of an upstream object a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Intent {
    /// No `managedFields`: nobody can tell.
    #[default]
    Unknown,
    /// JSON pointers of the fields present in the object that no manager owns (each names a
    /// whole subtree); every other field present was asked for by a client.
    ServerSet(Vec<String>),
}

impl Intent {
    /// The intent of an object, from its `metadata.managedFields`: the compact entry a cache
    /// keeps, or the apiserver's own entries.
    pub fn of(obj: &Value) -> Self {
        let Some(Value::Array(entries)) = obj.pointer("/metadata/managedFields") else { return Self::Unknown };
        if let [entry] = entries.as_slice()
            && entry.get("fieldsType").and_then(Value::as_str) == Some(COMPACT_FIELDS_TYPE)
        {
            let paths = entry
                .get("fieldsV1")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>());
            return paths.map_or(Self::Unknown, Self::ServerSet);
        }
        let last_applied = obj.pointer(LAST_APPLIED_POINTER).and_then(Value::as_str);
        let sets: Vec<Cow<'_, Value>> = entries
            .iter()
            .filter_map(|e| {
                Some(asked_fields(e.get("manager").and_then(Value::as_str), e.get("fieldsV1")?, last_applied))
            })
            .collect();
        if sets.is_empty() {
            return Self::Unknown;
        }
        let sets: Vec<&Value> = sets.iter().map(AsRef::as_ref).collect();
        Self::ServerSet(server_set(&sets, obj, obj.get("metadata").unwrap_or(&Value::Null)))
    }

    /// The managedFields entry that stands for this intent in a cache, or `None` for unknown.
    pub fn compact_entry(&self) -> Option<Value> {
        match self {
            Self::Unknown => None,
            Self::ServerSet(paths) => Some(json!({
                "manager": "downsync",
                "operation": "Update",
                "fieldsType": COMPACT_FIELDS_TYPE,
                "fieldsV1": paths,
            })),
        }
    }

    /// Whether the intent is known.
    pub fn is_known(&self) -> bool {
        matches!(self, Self::ServerSet(_))
    }

    /// Whether a client asked for the field at `ptr` (assumed present): false when unknown.
    pub fn requested(&self, ptr: &str) -> bool {
        match self {
            Self::Unknown => false,
            Self::ServerSet(paths) => !paths.iter().any(|p| covers(p, ptr)),
        }
    }

    /// Only what lies inside (or covers) one of `reads`; everything when `reads` is empty.
    pub fn within(&self, reads: &[String]) -> Self {
        match self {
            Self::ServerSet(paths) if !reads.is_empty() => Self::ServerSet(
                paths.iter().filter(|p| reads.iter().any(|r| covers(r, p) || covers(p, r))).cloned().collect(),
            ),
            other => other.clone(),
        }
    }

    /// A short text that changes when the intent does; part of the desired hash for kinds
    /// whose rules read intent.
    pub fn digest(&self) -> String {
        match self {
            Self::Unknown => "intent:unknown".into(),
            Self::ServerSet(paths) => format!("intent:{}", paths.join(",")),
        }
    }
}

/// What downsync enforces of `object` (the desired object after the rules): the fields some
/// upstream client asked for. Each field the upstream server filled in (a default, an
/// allocation) is taken out, unless a rule changed it from the `upstream` value (then the rule
/// decided it). With the intent unknown, nothing is taken out.
///
/// Taken-out fields are the downstream's: a write keeps their live values, a server-side apply
/// leaves them out so downsync never becomes their manager, and a create lets the downstream
/// server fill them in as the upstream one did.
pub fn enforced(mut object: Value, intent: &Intent, upstream: &Value) -> Value {
    let Intent::ServerSet(paths) = intent else { return object };
    // Last first: taking out a list element shifts the later ones.
    for path in paths.iter().rev() {
        if object.pointer(path).is_some() && object.pointer(path) == upstream.pointer(path) {
            pointer::remove(&mut object, path);
        }
    }
    object
}

/// The field manager of client-side `kubectl apply`. It sends the whole object as an update,
/// so the API server records it as owning every field of the result, server defaults included;
/// what the user applied is kept in the [`LAST_APPLIED_ANNOTATION`].
pub const CLIENT_SIDE_APPLY: &str = "kubectl-client-side-apply";

/// The annotation client-side `kubectl apply` keeps the applied configuration in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

const LAST_APPLIED_POINTER: &str = "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

/// The fields a manager asked for, as a `fieldsV1` set: its own set, except for client-side
/// `kubectl apply` with a readable last-applied configuration, whose fields are the ones it
/// asked for (lists by index, each element's fields under it).
pub fn asked_fields<'a>(manager: Option<&str>, fields_v1: &'a Value, last_applied: Option<&str>) -> Cow<'a, Value> {
    if manager == Some(CLIENT_SIDE_APPLY)
        && let Some(Ok(applied @ Value::Object(_))) = last_applied.map(serde_json::from_str::<Value>)
    {
        return Cow::Owned(field_set_of(&applied));
    }
    Cow::Borrowed(fields_v1)
}

/// The `fieldsV1` set that owns every field of `v`.
fn field_set_of(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (format!("f:{k}"), field_set_of(v))).collect()),
        Value::Array(items) => {
            Value::Object(items.iter().enumerate().map(|(i, v)| (format!("i:{i}"), field_set_of(v))).collect())
        }
        _ => Value::Object(Map::new()),
    }
}

/// Whether pointer `outer` is `inner` or one of its ancestors (segment-wise).
pub fn covers(outer: &str, inner: &str) -> bool {
    inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The pointers of the fields in `body` (the top-level fields other than identity, metadata
/// and status) and in `metadata`'s labels and annotations that none of the managers' field
/// sets (`fieldsV1` values) owns.
pub fn server_set(sets: &[&Value], body: &Value, metadata: &Value) -> Vec<String> {
    let roots: Vec<&Map<String, Value>> = sets.iter().filter_map(|s| s.as_object()).collect();
    let mut out = Vec::new();
    let mut path = String::new();
    if let Value::Object(fields) = body {
        for (k, v) in fields.iter().filter(|(k, _)| !NOT_INTENT.contains(&k.as_str())) {
            field(&roots, k, v, &mut path, &mut out);
        }
    }
    let meta_sets = children(&roots, "f:metadata");
    path.push_str("/metadata");
    for k in ["labels", "annotations"] {
        // Key by key, never the whole map: downsync adds keys of its own (where the object came
        // from), which no upstream manager can own. A map holding only what the server set (kcp
        // puts `kcp.io/cluster` on every object) would otherwise take them out with it.
        if let Some(Value::Object(map)) = metadata.get(k) {
            let owned = children(&meta_sets, &format!("f:{k}"));
            let len = path.len();
            path.push('/');
            path.push_str(k);
            for (key, v) in map {
                field(&owned, key, v, &mut path, &mut out);
            }
            path.truncate(len);
        }
    }
    out
}

/// The non-empty field sets under `key` of every manager.
fn children<'a>(sets: &[&'a Map<String, Value>], key: &str) -> Vec<&'a Map<String, Value>> {
    sets.iter().filter_map(|s| s.get(key)).filter_map(Value::as_object).collect()
}

/// One field `k` with value `v` of an object whose managers' sets are `sets`.
fn field(sets: &[&Map<String, Value>], k: &str, v: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    path.push('/');
    path.push_str(&pointer::escape(k));
    let owned: Vec<&Map<String, Value>> =
        sets.iter().filter_map(|s| s.get(&format!("f:{k}"))).filter_map(Value::as_object).collect();
    node(&owned, v, path, out);
    path.truncate(len);
}

/// A value whose managers' sets are `sets` (empty: nobody owns it).
fn node(sets: &[&Map<String, Value>], v: &Value, path: &mut String, out: &mut Vec<String>) {
    if sets.is_empty() {
        out.push(path.clone());
        return;
    }
    // A manager that owns the value with no finer entries owns all of it (a leaf, or an
    // atomic map or list).
    if sets.iter().any(|s| s.keys().all(|k| k == ".")) {
        return;
    }
    match v {
        Value::Object(fields) => {
            for (k, child) in fields {
                field(sets, k, child, path, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                let owned: Vec<&Map<String, Value>> = sets.iter().flat_map(|s| element_sets(s, i, item)).collect();
                node(&owned, item, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The entries of a list's field set that name element `i` (`item`): by key fields
/// (`k:{"port":80,"protocol":"TCP"}`), by value (`v:"a"`) or by index (`i:0`).
fn element_sets<'a>(set: &'a Map<String, Value>, i: usize, item: &Value) -> Vec<&'a Map<String, Value>> {
    set.iter().filter(|(k, _)| element_matches(k, i, item)).filter_map(|(_, v)| v.as_object()).collect()
}

/// Whether a list's field-set key (`k:{…}`, `v:…`, `i:N`) names element `i`, `item`.
pub(crate) fn element_matches(key: &str, i: usize, item: &Value) -> bool {
    if let Some(keys) = key.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(keys) else { return false };
        keys.iter().all(|(f, want)| item.get(f) == Some(want))
    } else if let Some(value) = key.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|v| &v == item)
    } else if let Some(index) = key.strip_prefix("i:") {
        index.parse::<usize>() == Ok(i)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubectl create` of a NodePort Service with ports 80 (nodePort 30080 asked for)
    /// and 81 (none) gives on kube-apiserver v1.37: the fields and managedFields as read back.
    fn mk_created_service() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "labels": {"app": "web"},
                "managedFields": [{
                    "manager": "kubectl-create", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {
                        "f:externalTrafficPolicy": {}, "f:internalTrafficPolicy": {},
                        "f:ports": {".": {},
                            "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:nodePort": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}},
                            "k:{\"port\":81,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                        "f:sessionAffinity": {}, "f:type": {}}}
                }]},
            "spec": {"clusterIP": "10.0.121.139", "clusterIPs": ["10.0.121.139"], "externalTrafficPolicy": "Cluster",
                "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"name": "http", "nodePort": 30080, "port": 80, "protocol": "TCP", "targetPort": 80},
                    {"name": "other", "nodePort": 31055, "port": 81, "protocol": "TCP", "targetPort": 81}],
                "sessionAffinity": "None", "type": "NodePort"},
            "status": {"loadBalancer": {}}
        })
    }

    #[test]
    fn allocated_fields_are_server_set_and_requested_ones_are_not() {
        let svc = mk_created_service();
        let intent = Intent::of(&svc);
        assert_eq!(
            intent,
            Intent::ServerSet(vec![
                "/spec/clusterIP".into(),
                "/spec/clusterIPs".into(),
                "/spec/ipFamilies".into(),
                "/spec/ipFamilyPolicy".into(),
                "/spec/ports/1/nodePort".into(),
            ])
        );
        assert!(intent.requested("/spec/ports/0/nodePort"));
        assert!(!intent.requested("/spec/ports/1/nodePort"));
        assert!(!intent.requested("/spec/clusterIPs/0"), "inside a server-set subtree");
        assert!(intent.requested("/metadata/labels/app"));
    }

    #[test]
    fn no_managed_fields_is_unknown_and_requests_nothing() {
        let mut svc = mk_created_service();
        svc["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
        let intent = Intent::of(&svc);
        assert_eq!(intent, Intent::Unknown);
        assert!(!intent.requested("/spec/ports/0/nodePort"));
        svc["metadata"]["managedFields"] = json!([]);
        assert_eq!(Intent::of(&svc), Intent::Unknown);
    }

    #[test]
    fn the_compact_entry_reads_back_as_the_same_intent() {
        let intent = Intent::of(&mk_created_service());
        let mut cached = mk_created_service();
        cached["metadata"]["managedFields"] = json!([intent.compact_entry()]);
        assert_eq!(Intent::of(&cached), intent);
        assert_eq!(Intent::Unknown.compact_entry(), None);
    }

    #[test]
    fn two_managers_own_the_union_and_an_atomic_owner_owns_the_subtree() {
        let obj = json!({"metadata": {"managedFields": [
                {"fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:a": {}}}},
                {"fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:b": {}, "f:list": {}}}}]},
            "spec": {"a": 1, "b": {"x": 1}, "c": 3, "list": [{"k": 1}, {"k": 2}]}});
        assert_eq!(Intent::of(&obj), Intent::ServerSet(vec!["/spec/c".into()]));
    }

    #[test]
    fn annotations_only_the_server_set_are_server_set_key_by_key_not_as_a_map() {
        let obj = json!({"metadata": {
                "annotations": {"kcp.io/cluster": "2abc9xyz"},
                "managedFields": [{"fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:k": {}}}}]},
            "data": {"k": "v"}});
        assert_eq!(Intent::of(&obj), Intent::ServerSet(vec!["/metadata/annotations/kcp.io~1cluster".into()]));
        let Intent::ServerSet(paths) = Intent::of(&obj) else { panic!("no intent") };
        assert!(!paths.iter().any(|p| covers(p, "/metadata/annotations/downsync.dev~1upstream-namespace")));
    }

    #[test]
    fn set_lists_by_value_and_index_and_escaped_keys() {
        let obj = json!({"metadata": {
                "annotations": {"a/b": "1", "set~by": "server"},
                "managedFields": [{"fieldsType": "FieldsV1", "fieldsV1": {
                    "f:metadata": {"f:annotations": {"f:a/b": {}}},
                    "f:spec": {"f:finalizers": {"v:\"x\"": {}}, "f:args": {"i:1": {}}}}}]},
            "spec": {"finalizers": ["x", "y"], "args": ["a", "b"]}});
        assert_eq!(
            Intent::of(&obj),
            Intent::ServerSet(vec![
                "/spec/finalizers/1".into(),
                "/spec/args/0".into(),
                "/metadata/annotations/set~0by".into()
            ])
        );
    }

    #[test]
    fn only_what_a_client_asked_for_is_enforced() {
        let svc = mk_created_service();
        let intent = Intent::of(&svc);
        let mut object = svc.clone();
        object["spec"]["clusterIP"] = json!("10.0.0.9");
        let out = enforced(object, &intent, &svc);
        assert_eq!(out["spec"]["clusterIP"], json!("10.0.0.9"), "a rule changed it: the rule decided");
        assert_eq!(out["spec"].get("clusterIPs"), None);
        assert_eq!(out["spec"].get("ipFamilyPolicy"), None);
        assert_eq!(out["spec"]["ports"][0]["nodePort"], json!(30080), "asked for");
        assert_eq!(out["spec"]["ports"][1].get("nodePort"), None, "allocated");
        assert_eq!(out["spec"]["type"], json!("NodePort"));
        assert_eq!(enforced(svc.clone(), &Intent::Unknown, &svc), svc, "intent unknown: everything, as before");

        let with_list = json!({"spec": {"finalizers": ["x", "y", "z"]}});
        let intent = Intent::ServerSet(vec!["/spec/finalizers/0".into(), "/spec/finalizers/2".into()]);
        assert_eq!(enforced(with_list.clone(), &intent, &with_list), json!({"spec": {"finalizers": ["y"]}}));
    }

    #[test]
    fn client_side_apply_asked_for_what_its_last_applied_configuration_holds() {
        // `kubectl apply` (client-side) of a Deployment without replicas, read back from
        // kube-apiserver v1.37: the manager owns every field, defaults included.
        let applied = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"ns"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"spec":{"containers":[{"name":"app","image":"nginx"}]}}}}"#;
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns",
                "annotations": {LAST_APPLIED_ANNOTATION: applied},
                "managedFields": [{"manager": CLIENT_SIDE_APPLY, "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
                        "f:spec": {"f:replicas": {}, "f:progressDeadlineSeconds": {}, "f:selector": {},
                        "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                            ".": {}, "f:image": {}, "f:name": {}, "f:imagePullPolicy": {}}}}}}}},
                    {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:paused": {}}}}]},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 600, "paused": false,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "nginx", "imagePullPolicy": "Always"}]}}}});
        let intent = Intent::of(&obj);
        for server_set in
            ["/spec/replicas", "/spec/progressDeadlineSeconds", "/spec/template/spec/containers/0/imagePullPolicy"]
        {
            assert!(!intent.requested(server_set), "{server_set} was defaulted: {intent:?}");
        }
        for asked in ["/spec/selector/matchLabels/app", "/spec/template/spec/containers/0/image", "/spec/paused"] {
            assert!(intent.requested(asked), "{asked}: {intent:?}");
        }
        // Without a readable annotation, the manager's own set counts, as for any other.
        let mut plain = obj.clone();
        plain["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = json!("not json");
        assert!(Intent::of(&plain).requested("/spec/replicas"));
    }

    #[test]
    fn within_keeps_what_lies_under_or_covers_a_read() {
        let intent = Intent::ServerSet(vec!["/spec/clusterIPs".into(), "/metadata/labels/x".into()]);
        assert_eq!(intent.within(&["/spec".into()]), Intent::ServerSet(vec!["/spec/clusterIPs".into()]));
        assert_eq!(intent.within(&["/spec/clusterIPs/0".into()]), Intent::ServerSet(vec!["/spec/clusterIPs".into()]));
        assert_eq!(intent.within(&[]), intent);
        assert!(covers("/spec", "/spec/x") && !covers("/spec", "/specs") && covers("/a", "/a"));
    }
}
