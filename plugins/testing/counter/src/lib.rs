//! Test component for the instance policy: stamps how many calls its instance has served.
//!
//! `transform` bumps a counter kept in a static and writes it to the ConfigMap annotation
//! `test.downsync.dev/calls`. Under the default policy (a fresh instance per call) every object
//! reads `1`: nothing one object leaves behind reaches the next. Under `instances: reused` the
//! counter climbs. It claims to be stateless (it is not) precisely so that the host honours
//! `reused` for it and the tests can see the difference; never deploy it.

use std::sync::atomic::{AtomicU64, Ordering};

use downsync_plugin_sdk::{Hook, Info, Intent, Rule, Value, pointer};

/// The stamped annotation, as a JSON pointer.
pub const ANNOTATION: &str = "/metadata/annotations/test.downsync.dev~1calls";

/// Calls served by this instance: the state a fresh instance must not carry over.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts calls.
pub struct Counter;

impl Rule for Counter {
    fn describe() -> Info {
        Info::new("counter", "0.2.0")
            .stateless()
            .kind("", "ConfigMap")
            .scope(ANNOTATION)
            .hooks(&[Hook::Transform])
            .reads("/metadata/annotations")
    }

    fn transform(mut desired: Value, _intent: &Intent) -> Result<Value, String> {
        let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if !pointer::set(&mut desired, ANNOTATION, Value::from(n.to_string())) {
            return Err("metadata.annotations is not an object".into());
        }
        Ok(desired)
    }
}

downsync_plugin_sdk::export_rule!(Counter);
