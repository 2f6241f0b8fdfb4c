//! The downsync rule plugin `{{name}}`: keeps `data.downstream` of ConfigMaps that exist
//! downstream (a field the downstream cluster writes), and tells the differ to ignore it.
//!
//! Build and test it (see README.md):
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --profile plugin
//! downsync plugin test target/wasm32-wasip2/plugin/{{crate}}.wasm fixtures
//! ```

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value, pointer};

const KEPT: &str = "/data/downstream";

/// The rule.
pub struct Plugin;

impl Rule for Plugin {
    fn describe() -> Info {
        Info::new("{{name}}", "0.1.0")
            .kind("", "ConfigMap")
            .scope(KEPT)
            .hooks(&[Hook::Preserve, Hook::IgnorePaths])
            .reads("/data")
    }

    fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
        pointer::copy_if_absent(&existing, &mut desired, KEPT);
        Ok(Decision::Apply(desired))
    }

    fn ignore_paths(group: &str, kind: &str) -> Vec<String> {
        if group.is_empty() && kind == "ConfigMap" { vec![KEPT.to_string()] } else { Vec::new() }
    }
}

downsync_plugin_sdk::export_rule!(Plugin);
