//! Test component for the hot-reload benchmark: stamps a marker, patchable in the built file, on ConfigMaps.
//!
//! `transform` sets the annotation `bench.downsync.dev/stamp` to [`MARKER`]. The marker's bytes
//! sit once in the component's data segment, so `downsync-bench` makes any number of versions
//! of one build by overwriting them with another string of the same length ([`variant`]): each
//! version has a new sha256 and a behaviour that shows in every object it writes. The variant
//! [`TRAP`] traps on every call instead: a broken release, for the rollback tests.

use downsync_plugin_sdk::{Hook, Info, Intent, Rule, Value, pointer};

/// The stamped annotation, as a JSON pointer.
pub const ANNOTATION: &str = "/metadata/annotations/bench.downsync.dev~1stamp";

/// The stamp of the unpatched build; variants replace these bytes.
pub const MARKER: &str = "downsync-bench-stamp-000000000000";

/// A variant that traps on every call (a panic in the guest), as long as [`MARKER`].
pub const TRAP: &str = "downsync-bench-stamp-trap-trap-tr";

/// The stamp of version `n`: as long as [`MARKER`], so it can replace it in place.
pub fn variant(n: u64) -> String {
    format!("downsync-bench-stamp-{n:012}")
}

/// Stamps ConfigMaps.
pub struct Stamp;

impl Rule for Stamp {
    fn describe() -> Info {
        Info::new("stamp", "0.2.0")
            .kind("", "ConfigMap")
            .scope(ANNOTATION)
            .hooks(&[Hook::Transform])
            .reads("/metadata/annotations")
    }

    fn transform(mut desired: Value, _intent: &Intent) -> Result<Value, String> {
        // black_box keeps the marker a plain run of bytes in the data segment.
        let stamp = std::hint::black_box(MARKER);
        if stamp.as_bytes().get(21..25) == Some(b"trap".as_slice()) {
            panic!("this stamp version is broken on purpose");
        }
        if !pointer::set(&mut desired, ANNOTATION, Value::from(stamp)) {
            return Err("metadata.annotations is not an object".into());
        }
        Ok(desired)
    }
}

downsync_plugin_sdk::export_rule!(Stamp);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    #[test]
    fn variants_have_the_markers_length_and_differ() {
        assert_eq!(variant(7).len(), MARKER.len());
        assert_eq!(variant(0), MARKER);
        assert_ne!(variant(1), variant(2));
        assert_eq!(TRAP.len(), MARKER.len());
    }

    #[test]
    fn transform_stamps_the_annotation() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
        let out = Stamp::transform(cm, &downsync_plugin_sdk::Intent::unknown()).unwrap();
        assert_eq!(out.pointer(ANNOTATION), Some(&json!(MARKER)));
    }
}
