//! The smallest downsync rule plugin: stamps `downsync.dev/minimal: "seen"` on ConfigMaps.
//!
//! It proves the toolchain end to end: built for wasm32-wasip2, loaded by the host's wasmtime.

use downsync_plugin_sdk::{Hook, Info, Intent, Rule, Value, log, pointer};

/// Marks every ConfigMap it transforms.
pub struct Minimal;

impl Rule for Minimal {
    fn describe() -> Info {
        Info::new("minimal", "0.2.0")
            .kind("", "ConfigMap")
            .scope("/metadata/annotations/downsync.dev~1minimal")
            .hooks(&[Hook::Transform])
            .reads("/metadata/annotations")
    }

    fn transform(mut desired: Value, _intent: &Intent) -> Result<Value, String> {
        if !pointer::set(&mut desired, "/metadata/annotations/downsync.dev~1minimal", Value::from("seen")) {
            return Err("metadata.annotations is not an object".into());
        }
        log::debug("stamped downsync.dev/minimal");
        Ok(desired)
    }
}

downsync_plugin_sdk::export_rule!(Minimal);
