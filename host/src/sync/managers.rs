//! Who set which field of a live object: the field managers recorded in its `managedFields`.
//!
//! The apiserver records for each client (field manager) the fields it set, as a `fieldsV1`
//! tree (`f:spec` → `f:replicas`; list elements by key, value or index). This file turns one
//! manager's tree into JSON pointers into the object, and tells who owns a given pointer: the
//! drift report names the manager behind a change (`kubectl-edit`, an HPA, a controller), and
//! the drift policy keeps the fields of the managers it is told to leave alone.

use serde_json::{Map, Value};

use super::intent::{covers, element_matches};
use super::pointer;

/// One entry of `metadata.managedFields`, as far as downsync needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    /// The field manager: `kubectl-edit`, `kube-controller-manager`, `downsync`.
    pub name: String,
    /// `Update` or `Apply`.
    pub operation: String,
    /// The subresource written through (`scale`, `status`), if any.
    pub subresource: Option<String>,
    /// The JSON pointers of the fields it owns in the object (leaves, or atomic subtrees).
    pub fields: Vec<String>,
}

impl Manager {
    /// `name` with its operation and subresource, for messages: `hpa (Update scale)`.
    pub fn describe(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{} ({} {sub})", self.name, self.operation),
            None => format!("{} ({})", self.name, self.operation),
        }
    }

    /// Whether this manager owns `ptr`, part of it, or a subtree holding it.
    pub fn touches(&self, ptr: &str) -> bool {
        self.fields.iter().any(|f| covers(f, ptr) || covers(ptr, f))
    }
}

/// The field managers of `obj`, from its `metadata.managedFields`; empty when there are none
/// (a cache that dropped them, or a server that records none).
pub fn managers(obj: &Value) -> Vec<Manager> {
    let Some(Value::Array(entries)) = obj.pointer("/metadata/managedFields") else { return Vec::new() };
    entries
        .iter()
        .filter_map(|e| {
            let name = e.get("manager").and_then(Value::as_str).unwrap_or("").to_string();
            let set = e.get("fieldsV1")?.as_object()?;
            let mut fields = Vec::new();
            walk(set, obj, &mut String::new(), &mut fields);
            Some(Manager {
                name,
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("").to_string(),
                subresource: e.get("subresource").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string),
                fields,
            })
        })
        .collect()
}

/// The managers, other than `except`, that touch `ptr`.
pub fn owners_of<'a>(managers: &'a [Manager], ptr: &str, except: &[&str]) -> Vec<&'a Manager> {
    managers.iter().filter(|m| !except.contains(&m.name.as_str()) && m.touches(ptr)).collect()
}

/// Collects the pointers a field set owns under `value`, which sits at `path`: the node itself
/// when the set owns it whole (a leaf, or `.`: its existence), then what the finer entries own.
fn walk(set: &Map<String, Value>, value: &Value, path: &mut String, out: &mut Vec<String>) {
    if (set.is_empty() || set.contains_key(".")) && !path.is_empty() {
        out.push(path.clone());
    }
    for (key, child_set) in set {
        let Some(child_set) = child_set.as_object() else { continue };
        let len = path.len();
        let child = if let Some(field) = key.strip_prefix("f:") {
            path.push('/');
            path.push_str(&pointer::escape(field));
            value.get(field)
        } else if key == "." {
            continue;
        } else {
            let Some((i, item)) = element(value, key) else { continue };
            path.push('/');
            path.push_str(&i.to_string());
            Some(item)
        };
        // Owned but gone from the object (a removal on its way): nothing to point at.
        if let Some(child) = child {
            walk(child_set, child, path, out);
        }
        path.truncate(len);
    }
}

/// The element of list `value` that a `k:`, `v:` or `i:` key names, with its index.
fn element<'a>(value: &'a Value, key: &str) -> Option<(usize, &'a Value)> {
    value.as_array()?.iter().enumerate().find(|(i, item)| element_matches(key, *i, item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Deployment as read back from kube-apiserver v1.37 after `kubectl apply` upstream of the
    /// spec, downsync's PUT, and an HPA stand-in's scale: three managers.
    fn mk_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}, "managedFields": [
                {"manager": "downsync", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:env": {".": {},
                            "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}},
                {"manager": "hpa", "operation": "Update", "subresource": "scale", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl-edit", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {
                    "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                        "f:env": {"k:{\"name\":\"B\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}}
            ]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "nginx",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}}}
        })
    }

    #[test]
    fn each_managers_fields_become_pointers_into_the_object() {
        let ms = managers(&mk_deployment());
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[1].name, "hpa");
        assert_eq!(ms[1].describe(), "hpa (Update scale)");
        assert_eq!(ms[1].fields, vec!["/spec/replicas".to_string()]);
        assert_eq!(
            ms[2].fields,
            vec![
                "/spec/template/spec/containers/0/env/1".to_string(),
                "/spec/template/spec/containers/0/env/1/name".to_string(),
                "/spec/template/spec/containers/0/env/1/value".to_string()
            ]
        );
        assert!(ms[0].fields.contains(&"/metadata/labels/app".to_string()));
        assert!(ms[0].fields.contains(&"/spec/template/spec/containers/0/image".to_string()));
    }

    #[test]
    fn the_owner_of_a_changed_field_is_named_and_our_own_manager_is_left_out() {
        let obj = mk_deployment();
        let ms = managers(&obj);
        let names = |ptr: &str| owners_of(&ms, ptr, &["downsync"]).iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("/spec/replicas"), vec!["hpa"]);
        assert_eq!(names("/spec/template/spec/containers/0/env/1/value"), vec!["kubectl-edit"]);
        assert_eq!(names("/spec/template/spec/containers/0/env"), vec!["kubectl-edit"], "a whole list: who touched it");
        assert!(names("/spec/template/spec/containers/0/image").is_empty(), "only downsync set it");
        assert!(names("/spec/paused").is_empty());
    }

    #[test]
    fn no_managed_fields_means_no_managers() {
        assert!(managers(&json!({"metadata": {"name": "x"}})).is_empty());
        let atomic = json!({"metadata": {"managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {"f:list": {}}}}]},
            "spec": {"list": [1, 2]}});
        assert_eq!(managers(&atomic)[0].fields, vec!["/spec/list".to_string()], "an atomic list is one field");
    }
}
