//! Test component that reads `/metadata`, a parent of the identity fields: the host must send
//! it the whole of `metadata` (labels and annotations too) and merge back exactly that.
//!
//! `transform` stamps the label `metadata-reader: seen` on ConfigMaps (its scope); every other
//! label and annotation must come through untouched.

use downsync_plugin_sdk::{Hook, Info, Intent, Rule, Value, pointer};

/// The stamped label, as a JSON pointer.
pub const LABEL: &str = "/metadata/labels/metadata-reader";

/// Stamps a label, reading all of `metadata`.
pub struct MetadataReader;

impl Rule for MetadataReader {
    fn describe() -> Info {
        Info::new("metadata-reader", "0.2.0")
            .kind("", "ConfigMap")
            .scope(LABEL)
            .hooks(&[Hook::Transform])
            .reads("/metadata")
    }

    fn transform(mut desired: Value, _intent: &Intent) -> Result<Value, String> {
        if pointer::get(&desired, "/metadata/labels").is_none() {
            return Err("sent no labels: the host projected only part of /metadata".into());
        }
        if !pointer::set(&mut desired, LABEL, Value::from("seen")) {
            return Err("metadata.labels is not an object".into());
        }
        Ok(desired)
    }
}

downsync_plugin_sdk::export_rule!(MetadataReader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_all_of_metadata_and_writes_one_label() {
        let info = MetadataReader::describe();
        assert_eq!(info.reads, ["/metadata"]);
        assert_eq!(info.scope, [LABEL]);
    }
}
