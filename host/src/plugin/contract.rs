//! The output contract between the host and a plugin: which fields a plugin may write (its
//! declared scope, never the object's identity or downsync's own ownership stamp) and the check
//! of each hook's output against its input.

use serde_json::{Map, Value};

use super::error::{Error, Result, Violation};
use super::types::PluginInfo;
use crate::sync::mapping::{NAMESPACE_LOCATOR_ANNOTATION, UPSTREAM_NAMESPACE_ANNOTATION};
use crate::sync::ownership::IDENTITY_PATHS;
use crate::sync::ownership::{DESIRED_HASH_ANNOTATION, MANAGED_BY_LABEL, OWNER_ANNOTATION, TARGET_LABEL};
use crate::sync::pointer;
use crate::sync::preservation::{MANAGED_ANNOTATIONS_ANNOTATION, MANAGED_LABELS_ANNOTATION};
use crate::sync::syncer::object_ref;

/// The labels downsync stamps on every object it writes; a plugin that could rewrite them could
/// hand an object to another owner or make downsync adopt or delete what it does not own.
const RESERVED_LABELS: [&str; 2] = [MANAGED_BY_LABEL, TARGET_LABEL];

/// The annotations downsync stamps and later trusts (owner record, desired hash, the keys it
/// manages, where the object came from).
const RESERVED_ANNOTATIONS: [&str; 6] = [
    OWNER_ANNOTATION,
    DESIRED_HASH_ANNOTATION,
    UPSTREAM_NAMESPACE_ANNOTATION,
    NAMESPACE_LOCATOR_ANNOTATION,
    MANAGED_LABELS_ANNOTATION,
    MANAGED_ANNOTATIONS_ANNOTATION,
];

/// Every JSON pointer no plugin scope may cover: the identity fields and downsync's own
/// labels and annotations.
pub(super) fn reserved_paths() -> Vec<String> {
    let identity = IDENTITY_PATHS.iter().map(|p| (*p).to_string());
    let labels = RESERVED_LABELS.iter().map(|k| format!("/metadata/labels/{}", pointer::escape(k)));
    let annotations = RESERVED_ANNOTATIONS.iter().map(|k| format!("/metadata/annotations/{}", pointer::escape(k)));
    identity.chain(labels).chain(annotations).collect()
}

/// Refuses a write scope that covers a reserved path, as itself, a prefix (`/metadata/labels`)
/// or a wildcard (`/metadata/labels/*`), and a scope that is not a JSON pointer pattern.
pub(super) fn check_scope(info: &PluginInfo) -> Result<()> {
    let reserved = reserved_paths();
    for scope in &info.scope {
        if pointer::parse(scope).is_err() {
            return Err(Error::Describe {
                plugin: info.name.clone(),
                message: format!("scope {scope:?} is not a JSON pointer pattern"),
            });
        }
        if let Some(path) = reserved.iter().find(|r| patterns_overlap(scope, r)) {
            return Err(Error::ReservedScope { plugin: info.name.clone(), scope: scope.clone(), path: path.clone() });
        }
    }
    Ok(())
}

/// Checks a hook's output against its input: a JSON object with the same identity, changed only
/// inside the plugin's declared scope.
pub(super) fn check(info: &PluginInfo, hook: &'static str, input: &Value, output: &Value) -> Result<()> {
    let violation = |violation, path: &str, message: String| Error::Contract {
        plugin: info.name.clone(),
        hook,
        object: object_ref(input),
        violation,
        path: path.to_string(),
        message,
    };
    if !output.is_object() {
        return Err(violation(Violation::Output, "", "output is not a JSON object".into()));
    }
    for p in IDENTITY_PATHS {
        if input.pointer(p) != output.pointer(p) {
            return Err(violation(
                Violation::Identity,
                p,
                format!("changed the object's identity from {} to {}", show(input.pointer(p)), show(output.pointer(p))),
            ));
        }
    }
    for op in json_patch::diff(input, output).0 {
        let path = op.path().as_str();
        if let Some(bad) = uncovered(&info.scope, input.pointer(path), output.pointer(path), path) {
            return Err(violation(
                Violation::Scope,
                &bad,
                format!("changed a field outside its scope {:?}", info.scope),
            ));
        }
    }
    Ok(())
}

/// A value for an error message, cut to 100 characters: it comes from the plugin.
fn show(v: Option<&Value>) -> String {
    let text = v.map_or_else(|| "nothing".to_string(), Value::to_string);
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The first changed path between `old` and `new` (both at `path`) that no scope pattern covers.
///
/// A change at a path that only contains scoped fields (such as adding a whole `annotations`
/// map holding one scoped key) is looked into, so that it is judged by its leaves.
fn uncovered(scope: &[String], old: Option<&Value>, new: Option<&Value>, path: &str) -> Option<String> {
    if old == new || scope.iter().any(|s| pointer::is_prefix_pattern(s, path)) {
        return None;
    }
    let Ok(segs) = pointer::parse(path) else { return Some(path.to_string()) };
    let reaches_below = scope
        .iter()
        .any(|s| pointer::parse(s).is_ok_and(|pat| pat.len() > segs.len() && pointer::prefix_matches(&pat, &segs)));
    if !reaches_below {
        return Some(path.to_string());
    }
    let empty = Map::new();
    fn as_map<'a>(v: Option<&'a Value>, empty: &'a Map<String, Value>) -> Option<&'a Map<String, Value>> {
        match v {
            None | Some(Value::Null) => Some(empty),
            Some(Value::Object(m)) => Some(m),
            Some(_) => None,
        }
    }
    if let (Some(o), Some(n)) = (as_map(old, &empty), as_map(new, &empty)) {
        let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        return keys
            .into_iter()
            .find_map(|k| uncovered(scope, o.get(k), n.get(k), &format!("{path}/{}", pointer::escape(k))));
    }
    match (old, new) {
        (Some(Value::Array(o)), Some(Value::Array(n))) if o.len() == n.len() => o
            .iter()
            .zip(n)
            .enumerate()
            .find_map(|(i, (a, b))| uncovered(scope, Some(a), Some(b), &format!("{path}/{i}"))),
        _ => Some(path.to_string()),
    }
}

/// Whether two scope patterns can cover a common field: one is a prefix-pattern of the other,
/// or both can match the same path (`*` matches any one segment on either side).
pub(super) fn patterns_overlap(a: &str, b: &str) -> bool {
    match (pointer::parse(a), pointer::parse(b)) {
        (Ok(a), Ok(b)) => a.iter().zip(&b).all(|(x, y)| x == y || x == pointer::WILDCARD || y == pointer::WILDCARD),
        _ => false,
    }
}

/// A plugin's `describe` answer, for tests here and in the registry.
#[cfg(test)]
pub(crate) fn mk_info(name: &str, kinds: &[(&str, &str)], scope: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: "0.1.0".into(),
        kinds: kinds.iter().map(|(g, k)| super::types::KindPattern { group: (*g).into(), kind: (*k).into() }).collect(),
        scope: scope.iter().map(|s| (*s).into()).collect(),
        wit: super::types::WitVersion::V0_1,
        hooks: super::types::Hooks::ALL,
        reads: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_service(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "n"}, "spec": spec})
    }

    #[test]
    fn scopes_covering_ownership_labels_annotations_or_identity_are_refused() {
        for (scope, path) in [
            ("/metadata/labels/downsync.dev~1managed-by", "/metadata/labels/downsync.dev~1managed-by"),
            ("/metadata/labels/downsync.dev~1target", "/metadata/labels/downsync.dev~1target"),
            ("/metadata/labels", "/metadata/labels/downsync.dev~1managed-by"),
            ("/metadata/labels/*", "/metadata/labels/downsync.dev~1managed-by"),
            ("/metadata/annotations/downsync.dev~1owner", "/metadata/annotations/downsync.dev~1owner"),
            ("/metadata/annotations/*", "/metadata/annotations/downsync.dev~1owner"),
            ("/metadata/annotations/downsync.dev~1desired-hash", "/metadata/annotations/downsync.dev~1desired-hash"),
            (
                "/metadata/annotations/downsync.dev~1upstream-namespace",
                "/metadata/annotations/downsync.dev~1upstream-namespace",
            ),
            ("/metadata", "/metadata/name"),
            ("/metadata/*", "/metadata/name"),
            ("/*", "/apiVersion"),
            ("/kind", "/kind"),
            ("/metadata/namespace", "/metadata/namespace"),
        ] {
            let info = mk_info("greedy", &[("", "ConfigMap")], &["/spec/x", scope]);
            let err = check_scope(&info).expect_err(scope);
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::ReservedScope { plugin, scope: s, path: p } if plugin == "greedy" && s == scope && p == path),
                "{scope}: {msg}"
            );
            assert!(msg.contains("greedy") && msg.contains(path), "{msg}");
        }
    }

    #[test]
    fn scopes_of_the_builtin_plugins_pass() {
        let info = mk_info(
            "fine",
            &[("", "*")],
            &[
                "/metadata/annotations/downsync.dev~1minimal",
                "/metadata/annotations/pv.kubernetes.io~1bind-completed",
                "/metadata/labels/faulty",
                "/spec/ports/*/nodePort",
                "/secrets",
                "/imagePullSecrets",
            ],
        );
        assert!(check_scope(&info).is_ok());
        let bad = mk_info("bad", &[("", "*")], &["/spec/~2"]);
        assert!(matches!(check_scope(&bad), Err(Error::Describe { .. })));
    }

    #[test]
    fn patterns_overlap_by_prefix_or_by_wildcard() {
        assert!(patterns_overlap("/spec", "/spec/clusterIP"));
        assert!(patterns_overlap("/spec/ports/0", "/spec/ports/*/nodePort"));
        assert!(patterns_overlap("/spec/ports/*/nodePort", "/spec/*/0/nodePort"));
        assert!(!patterns_overlap("/spec/ports/*/nodePort", "/spec/ports/*/port"));
        assert!(!patterns_overlap("/spec/clusterIP", "/spec/clusterIPs"));
        assert!(!patterns_overlap("/secrets", "/imagePullSecrets"));
    }

    #[test]
    fn contract_allows_changes_inside_the_scope_only() {
        let info = mk_info("service", &[("", "Service")], &["/spec/clusterIP", "/spec/ports/*/nodePort"]);
        let input = mk_service("a", json!({"ports": [{"port": 80}]}));
        let good = mk_service("a", json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert!(check(&info, "preserve", &input, &good).is_ok());
        let bad = mk_service("a", json!({"ports": [{"port": 81}]}));
        let err = check(&info, "preserve", &input, &bad).unwrap_err();
        assert!(
            matches!(err, Error::Contract { violation: Violation::Scope, ref path, .. } if path == "/spec/ports/0/port"),
            "{err}"
        );
    }

    #[test]
    fn contract_judges_a_new_map_by_its_leaves() {
        let info = mk_info(
            "pv",
            &[("", "PersistentVolumeClaim")],
            &["/metadata/annotations/pv.kubernetes.io~1bind-completed"],
        );
        let input = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c", "annotations": null}});
        let mut good = input.clone();
        good["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes"});
        assert!(check(&info, "preserve", &input, &good).is_ok());
        let mut bad = input.clone();
        bad["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes", "other": "x"});
        let err = check(&info, "preserve", &input, &bad).unwrap_err();
        assert!(matches!(err, Error::Contract { ref path, .. } if path == "/metadata/annotations/other"), "{err}");
    }

    #[test]
    fn contract_refuses_identity_changes_and_non_objects() {
        let info = mk_info("any", &[("", "*")], &["/spec"]);
        let input = mk_service("a", json!({}));
        let renamed = mk_service("b", json!({}));
        let err = check(&info, "transform", &input, &renamed).unwrap_err();
        assert!(
            matches!(err, Error::Contract { violation: Violation::Identity, ref path, .. } if path == "/metadata/name"),
            "{err}"
        );
        let err = check(&info, "transform", &input, &json!([1])).unwrap_err();
        assert!(matches!(err, Error::Contract { violation: Violation::Output, .. }), "{err}");
    }
}
