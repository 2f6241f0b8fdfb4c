//! Test component built against the frozen `downsync:rules@0.1.0` (`wit/v0.1.0`), with
//! wit-bindgen and no SDK, as plugins built before 0.2.0 were: it proves that they keep
//! loading and running next to 0.2.0 plugins.
//!
//! `transform` stamps the annotation `downsync.dev/legacy: "0.1.0"` on ConfigMaps; `preserve`
//! applies the desired object; `ignore-paths` ignores nothing.

use serde_json::Value;

/// The stamped annotation's key.
pub const ANNOTATION: &str = "downsync.dev/legacy";

/// Stamps the annotation on a ConfigMap given as JSON text.
pub fn stamp(desired: &str) -> Result<String, String> {
    let mut obj: Value = serde_json::from_str(desired).map_err(|e| format!("desired is not JSON: {e}"))?;
    let meta = obj.get_mut("metadata").and_then(Value::as_object_mut).ok_or("metadata is not an object")?;
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(serde_json::Map::new()));
    if annotations.is_null() {
        *annotations = Value::Object(serde_json::Map::new());
    }
    let annotations = annotations.as_object_mut().ok_or("metadata.annotations is not an object")?;
    annotations.insert(ANNOTATION.into(), Value::from("0.1.0"));
    serde_json::to_string(&obj).map_err(|e| e.to_string())
}

#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unreachable_pub, unsafe_code, clippy::all)]
mod export {
    wit_bindgen::generate!({ world: "rule", path: "../../../wit/v0.1.0/rules.wit" });

    use downsync::rules::types::{Decision, KindPattern, PluginInfo};
    use exports::downsync::rules::rules::Guest;

    struct Legacy;

    impl Guest for Legacy {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: "legacy".into(),
                version: "0.1.0".into(),
                kinds: vec![KindPattern { group: "".into(), kind: "ConfigMap".into() }],
                scope: vec!["/metadata/annotations/downsync.dev~1legacy".into()],
            }
        }
        fn transform(desired: String) -> Result<String, String> {
            super::stamp(&desired)
        }
        fn preserve(_existing: String, desired: String) -> Result<Decision, String> {
            Ok(Decision::Apply(desired))
        }
        fn ignore_paths(_group: String, _kind: String) -> Vec<String> {
            Vec::new()
        }
    }

    export!(Legacy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_the_annotation_and_keeps_the_rest() {
        let out = stamp(r#"{"kind":"ConfigMap","metadata":{"name":"c","annotations":null},"data":{"a":"1"}}"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["metadata"]["annotations"][ANNOTATION], "0.1.0");
        assert_eq!(v["data"]["a"], "1");
        assert!(stamp("[").is_err());
    }
}
