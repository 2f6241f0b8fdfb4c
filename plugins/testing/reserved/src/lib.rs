//! Test component whose write scope (`/metadata/labels/*`) covers downsync's ownership labels; the host must refuse it at load.

use downsync_plugin_sdk::{Info, Rule};

/// Claims every label of a ConfigMap, downsync's own included.
pub struct Reserved;

impl Rule for Reserved {
    fn describe() -> Info {
        Info::new("reserved", "0.1.0").kind("", "ConfigMap").scope("/metadata/labels/*")
    }
}

downsync_plugin_sdk::export_rule!(Reserved);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_claims_every_label() {
        assert_eq!(Reserved::describe().scope, ["/metadata/labels/*"]);
    }
}
