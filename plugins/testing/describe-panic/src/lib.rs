//! Test component that panics in `describe`; the host must report the guest's panic, not crash.

use downsync_plugin_sdk::{Info, Rule};

/// Panics as soon as the host asks what it is.
pub struct DescribePanic;

impl Rule for DescribePanic {
    fn describe() -> Info {
        panic!("describe-panic plugin refuses to describe itself")
    }
}

downsync_plugin_sdk::export_rule!(DescribePanic);
