//! Built-in rule: an immutable ConfigMap or Secret whose content changed is recreated (or skipped).
//!
//! The apiserver refuses to change the data of a ConfigMap or Secret with `immutable: true`,
//! and refuses to clear the flag. When the live object is immutable and the desired one
//! differs in `data`/`binaryData` (a Secret's `stringData` counts, base64-encoded into `data`)
//! or no longer says `immutable: true`, an in-place update cannot work, so the rule decides:
//!
//! - `Recreate` (the default): delete the downstream object and create the desired one;
//! - `Skip`: leave the downstream object alone and report it.
//!
//! The WIT has no configuration channel, so the choice is made per object by the annotation
//! `downsync.dev/on-immutable: recreate|skip` on the desired object. Any other value is an
//! error (the object is not written under the default fail-closed policy).
//! The rule never writes a field, so its scope is empty.

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value, kinds, pointer};

/// The annotation that picks the mode.
pub const MODE_ANNOTATION: &str = "downsync.dev/on-immutable";

/// What to do with an immutable object that must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Delete and create.
    Recreate,
    /// Leave it and report.
    Skip,
}

/// Decides about immutable ConfigMaps and Secrets.
pub struct ImmutableConfigRule;

impl Rule for ImmutableConfigRule {
    fn describe() -> Info {
        Info::new("immutable-config", "0.2.0")
            .kind("", "ConfigMap")
            .kind("", "Secret")
            .hooks(&[Hook::Preserve])
            .reads("/immutable")
            .reads("/data")
            .reads("/stringData")
            .reads("/binaryData")
            .reads("/metadata/annotations/downsync.dev~1on-immutable")
    }

    fn preserve(existing: Value, desired: Value, _intent: &Intent) -> Result<Decision, String> {
        let Some(why) = blocked_change(&existing, &desired) else { return Ok(Decision::Apply(desired)) };
        Ok(match mode(&desired)? {
            Mode::Recreate => Decision::Recreate(format!("{why}; recreating")),
            Mode::Skip => Decision::Skip(format!("{why}; skipped ({MODE_ANNOTATION}: skip)")),
        })
    }
}

/// The mode the desired object asks for; `Recreate` when it does not say.
pub fn mode(desired: &Value) -> Result<Mode, String> {
    let key = format!("/metadata/annotations/{}", MODE_ANNOTATION.replace('~', "~0").replace('/', "~1"));
    match pointer::get(desired, &key).and_then(Value::as_str) {
        None => Ok(Mode::Recreate),
        Some(v) if v.eq_ignore_ascii_case("recreate") => Ok(Mode::Recreate),
        Some(v) if v.eq_ignore_ascii_case("skip") => Ok(Mode::Skip),
        Some(other) => Err(format!("annotation {MODE_ANNOTATION} is {other:?}; want recreate or skip")),
    }
}

fn is_immutable(obj: &Value) -> bool {
    obj.get("immutable").and_then(Value::as_bool) == Some(true)
}

/// Why the change cannot be made in place, or None when it can.
pub fn blocked_change(existing: &Value, desired: &Value) -> Option<String> {
    if !is_immutable(existing) {
        return None;
    }
    let (_, kind) = kinds::group_kind(desired);
    if !is_immutable(desired) {
        return Some(format!("{kind} is immutable downstream and the desired object clears immutable"));
    }
    if effective_data(existing) != effective_data(desired) {
        return Some(format!("{kind} is immutable downstream and its data changed"));
    }
    if existing.get("binaryData") != desired.get("binaryData") {
        return Some(format!("{kind} is immutable downstream and its binaryData changed"));
    }
    None
}

/// `data`, with a Secret's `stringData` merged in base64-encoded (as the apiserver does).
fn effective_data(obj: &Value) -> serde_json::Map<String, Value> {
    let mut data = obj.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    if kinds::is(obj, "", "Secret")
        && let Some(strings) = obj.get("stringData").and_then(Value::as_object)
    {
        for (k, v) in strings {
            if let Some(s) = v.as_str() {
                data.insert(k.clone(), Value::from(base64(s.as_bytes())));
            }
        }
    }
    data
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

downsync_plugin_sdk::export_rule!(ImmutableConfigRule);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    fn mk_config(kind: &str, immutable: Option<bool>, data: Value, mode: Option<&str>) -> Value {
        let mut obj =
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "c", "namespace": "n"}, "data": data});
        if let Some(i) = immutable {
            obj["immutable"] = json!(i);
        }
        if let Some(m) = mode {
            obj["metadata"]["annotations"] = json!({MODE_ANNOTATION: m});
        }
        obj
    }

    #[test]
    fn changed_data_of_an_immutable_configmap_is_recreated_by_default() {
        let live = mk_config("ConfigMap", Some(true), json!({"a": "1"}), None);
        let desired = mk_config("ConfigMap", Some(true), json!({"a": "2"}), None);
        let d = ImmutableConfigRule::preserve(live, desired, &Intent::unknown()).unwrap();
        assert!(matches!(d, Decision::Recreate(ref r) if r.contains("data changed")), "{d:?}");
    }

    #[test]
    fn the_annotation_selects_skip_and_rejects_nonsense() {
        let live = mk_config("ConfigMap", Some(true), json!({"a": "1"}), None);
        let skip = mk_config("ConfigMap", Some(true), json!({"a": "2"}), Some("skip"));
        assert!(matches!(
            ImmutableConfigRule::preserve(live.clone(), skip, &Intent::unknown()).unwrap(),
            Decision::Skip(_)
        ));
        let bad = mk_config("ConfigMap", Some(true), json!({"a": "2"}), Some("explode"));
        assert!(ImmutableConfigRule::preserve(live, bad, &Intent::unknown()).unwrap_err().contains("explode"));
    }

    #[test]
    fn clearing_immutable_is_blocked_but_unchanged_or_mutable_objects_apply() {
        let live = mk_config("ConfigMap", Some(true), json!({"a": "1"}), None);
        let cleared = mk_config("ConfigMap", None, json!({"a": "1"}), None);
        assert!(blocked_change(&live, &cleared).is_some_and(|r| r.contains("clears immutable")));
        let same = mk_config("ConfigMap", Some(true), json!({"a": "1"}), None);
        assert!(
            matches!(ImmutableConfigRule::preserve(live, same.clone(), &Intent::unknown()).unwrap(), Decision::Apply(ref v) if *v == same)
        );
        let mutable = mk_config("ConfigMap", Some(false), json!({"a": "1"}), None);
        assert_eq!(blocked_change(&mutable, &mk_config("ConfigMap", Some(true), json!({"a": "2"}), None)), None);
    }

    #[test]
    fn secret_string_data_is_compared_as_base64_data() {
        let live = mk_config("Secret", Some(true), json!({"password": "aHVudGVyMg=="}), None);
        let mut same = mk_config("Secret", Some(true), json!({}), None);
        same["stringData"] = json!({"password": "hunter2"});
        assert_eq!(blocked_change(&live, &same), None);
        same["stringData"] = json!({"password": "hunter3"});
        assert!(blocked_change(&live, &same).is_some());
    }

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hunter2"), "aHVudGVyMg==");
    }
}
