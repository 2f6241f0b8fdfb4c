//! Built-in rule: a ServiceAccount's `secrets` and `imagePullSecrets` are merged by name.
//!
//! Downstream controllers and admins add entries (token secrets, registry credentials of the
//! physical cluster). The written list is the desired entries, in their order, followed by the
//! live entries whose name the desired list lacks, in their live order. Without a memory of
//! what was synced before, an entry removed upstream that exists downstream is kept too.

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value};

/// The merged lists, as top-level keys.
pub const LISTS: [&str; 2] = ["secrets", "imagePullSecrets"];

/// Merges ServiceAccount secret lists.
pub struct ServiceAccountRule;

impl Rule for ServiceAccountRule {
    fn describe() -> Info {
        Info::new("service-account", "0.2.0")
            .kind("", "ServiceAccount")
            .scope("/secrets")
            .scope("/imagePullSecrets")
            .hooks(&[Hook::Preserve])
            .reads("/secrets")
            .reads("/imagePullSecrets")
    }

    fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
        for list in LISTS {
            merge_by_name(existing.get(list), &mut desired, list)?;
        }
        Ok(Decision::Apply(desired))
    }
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Appends to `desired[key]` the live entries whose name it lacks.
pub fn merge_by_name(live: Option<&Value>, desired: &mut Value, key: &str) -> Result<(), String> {
    let Some(Value::Array(live)) = live else { return Ok(()) };
    let Some(obj) = desired.as_object_mut() else { return Err("desired object is not an object".into()) };
    let slot = obj.entry(key.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(items) = slot else { return Err(format!("{key} is not a list")) };
    let before = items.len();
    for entry in live {
        let name = name_of(entry);
        if !items[..before].iter().any(|i| name.is_some() && name_of(i) == name) && !items.contains(entry) {
            items.push(entry.clone());
        }
    }
    if items.is_empty() {
        obj.remove(key);
    }
    Ok(())
}

downsync_plugin_sdk::export_rule!(ServiceAccountRule);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    fn mk_sa(secrets: Option<Value>, pulls: Option<Value>) -> Value {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "n"}});
        if let Some(s) = secrets {
            sa["secrets"] = s;
        }
        if let Some(p) = pulls {
            sa["imagePullSecrets"] = p;
        }
        sa
    }

    fn apply(existing: Value, desired: Value) -> Value {
        match ServiceAccountRule::preserve(existing, desired, &Intent::unknown()).unwrap() {
            Decision::Apply(v) => v,
            other => panic!("expected apply, got {other:?}"),
        }
    }

    #[test]
    fn downstream_entries_are_appended_after_the_desired_ones() {
        let live = mk_sa(
            Some(json!([{"name": "app-token-x"}, {"name": "shared"}])),
            Some(json!([{"name": "local-registry"}])),
        );
        let desired = mk_sa(
            Some(json!([{"name": "shared"}, {"name": "upstream"}])),
            Some(json!([{"name": "upstream-registry"}])),
        );
        let out = apply(live, desired);
        assert_eq!(out["secrets"], json!([{"name": "shared"}, {"name": "upstream"}, {"name": "app-token-x"}]));
        assert_eq!(out["imagePullSecrets"], json!([{"name": "upstream-registry"}, {"name": "local-registry"}]));
    }

    #[test]
    fn absent_lists_stay_absent_and_merging_twice_changes_nothing() {
        let out = apply(mk_sa(None, None), mk_sa(None, None));
        assert_eq!(out.get("secrets"), None);
        let live = mk_sa(Some(json!([{"name": "a"}])), None);
        let once = apply(live.clone(), mk_sa(None, Some(json!([{"name": "p"}]))));
        assert_eq!(once["secrets"], json!([{"name": "a"}]));
        assert_eq!(apply(live, once.clone()), once);
    }
}
