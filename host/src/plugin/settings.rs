//! The per-plugin settings of the config file: order, failure policy, rollout and registry source,
//! keyed by plugin name.

use std::collections::BTreeMap;

use std::path::PathBuf;

use super::oci::VerifyPolicy;
use super::rollout::RolloutSettings;

/// What happens to an object when a plugin fails on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
pub enum FailurePolicy {
    /// The object is not written; the failure is reported (the default).
    #[default]
    FailClosed,
    /// The plugin is skipped for this call, with a warning; the chain goes on without it.
    FailOpen,
}

/// Per-plugin settings from the config file, keyed by plugin name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSettings {
    /// Lower runs first; ties are broken by name. Not a setting: in the config, plugins run in
    /// the order of their names, as Kubernetes calls mutating admission webhooks.
    #[serde(skip)]
    pub priority: i32,
    /// What a failure of this plugin does to the object.
    pub failure_policy: FailurePolicy,
    /// How new versions are rolled out: shadow, promotion, automatic rollback.
    pub rollout: RolloutSettings,
    /// Where the component comes from instead of the plugins folder: a registry,
    /// `oci://REGISTRY/REPOSITORY:TAG` (checked for a new digest every
    /// `registry.checkSeconds`) or `oci://…@sha256:DIGEST` (never changes).
    pub source: Option<String>,
    /// Cosign public key files (PEM, as `cosign generate-key-pair` writes `cosign.pub`; a
    /// mounted Secret) trusted to sign the source.
    pub keys: Vec<PathBuf>,
    /// What is asked of the source's signatures: `required` (the default: a signature by one
    /// of `keys`), `optional` (unsigned is taken, a wrong signature is not) or `off`.
    pub verify: VerifyPolicy,
}

/// The typed plugin configuration: settings by plugin name. Unlisted plugins get the settings
/// under `"*"`, if given, else the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Settings by plugin name (as `describe` gives it).
    pub plugins: BTreeMap<String, PluginSettings>,
}

impl RegistryConfig {
    /// The settings of one plugin.
    pub fn settings(&self, name: &str) -> PluginSettings {
        self.plugins.get(name).or_else(|| self.plugins.get("*")).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_fail_closed_and_parse_from_yaml() {
        let cfg: RegistryConfig =
            serde_yaml_ng::from_str("plugins:\n  service:\n    failurePolicy: FailOpen\n").unwrap();
        assert_eq!(cfg.settings("service").failure_policy, FailurePolicy::FailOpen);
        let priority = serde_yaml_ng::from_str::<RegistryConfig>("plugins:\n  service:\n    priority: -1\n");
        assert!(priority.is_err(), "plugins run in the order of their names");
        let instances = serde_yaml_ng::from_str::<RegistryConfig>("plugins:\n  service:\n    instances: reused\n");
        assert!(instances.is_err(), "the plugin's stateless declaration decides");
        assert_eq!(cfg.settings("other"), PluginSettings::default());
        assert_eq!(PluginSettings::default().failure_policy, FailurePolicy::FailClosed);
    }
}
