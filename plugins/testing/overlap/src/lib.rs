//! Test component whose write scope (`/spec/ports/0` on every core kind) overlaps the service plugin's.

use downsync_plugin_sdk::{Info, Rule};

/// Claims the first port of every core object.
pub struct Overlap;

impl Rule for Overlap {
    fn describe() -> Info {
        Info::new("overlap", "0.1.0").kind("", "*").scope("/spec/ports/0")
    }
}

downsync_plugin_sdk::export_rule!(Overlap);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_claims_the_first_port_of_any_core_kind() {
        let info = Overlap::describe();
        assert_eq!(info.kinds, [(String::new(), "*".to_string())]);
        assert_eq!(info.scope, ["/spec/ports/0"]);
    }
}
