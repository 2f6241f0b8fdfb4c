//! Kind matching: which group/kind an object is, and whether it matches a pattern.

use serde_json::Value;

/// The (group, kind) of an object; the core group is "".
pub fn group_kind(obj: &Value) -> (String, String) {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    (group.to_string(), kind.to_string())
}

/// Whether `obj` has the given group and kind (`*` matches anything).
pub fn is(obj: &Value, group: &str, kind: &str) -> bool {
    let (g, k) = group_kind(obj);
    (group == "*" || group == g) && (kind == "*" || kind == k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn core_and_named_groups_are_told_apart() {
        let svc = json!({"apiVersion": "v1", "kind": "Service"});
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        assert!(is(&svc, "", "Service"));
        assert!(!is(&svc, "apps", "Service"));
        assert!(is(&dep, "apps", "*"));
        assert_eq!(group_kind(&dep), ("apps".to_string(), "Deployment".to_string()));
    }
}
