//! Plain types of the plugin runtime: what a plugin says about itself (kinds, WIT version,
//! hooks), how its calls get instances, and what a call returns.

use serde_json::Value;

/// A group/kind pattern; `*` matches anything, the core group is "".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KindPattern {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl KindPattern {
    /// Whether the pattern matches a group and kind.
    pub fn matches(&self, group: &str, kind: &str) -> bool {
        (self.group == "*" || self.group == group) && (self.kind == "*" || self.kind == kind)
    }
}

/// The version of the `downsync:rules` WIT package a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WitVersion {
    /// `downsync:rules@0.1.0`: every hook, the whole object, no intent.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `downsync:rules@0.2.0`: declared hooks and reads, intent.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        })
    }
}

/// The hooks a plugin implements; the others are never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// `transform`.
    pub transform: bool,
    /// `preserve`.
    pub preserve: bool,
    /// `ignore-paths`.
    pub ignore_paths: bool,
}

impl Hooks {
    /// Every hook (what a 0.1.0 plugin gets).
    pub const ALL: Self = Self { transform: true, preserve: true, ignore_paths: true };
}

/// What a plugin's `describe` said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// Unique name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kinds handled.
    pub kinds: Vec<KindPattern>,
    /// JSON pointer patterns it may write.
    pub scope: Vec<String>,
    /// The WIT package version it was built against.
    pub wit: WitVersion,
    /// The hooks it implements.
    pub hooks: Hooks,
    /// JSON pointers of what it reads; empty means the whole object.
    pub reads: Vec<String>,
}

impl PluginInfo {
    /// Whether the plugin handles this group and kind.
    pub fn handles(&self, group: &str, kind: &str) -> bool {
        self.kinds.iter().any(|k| k.matches(group, kind))
    }

    /// Whether the plugin declares itself stateless: its version carries the semver build
    /// metadata identifier `stateless` (`0.2.0+stateless`, `1.0.0+build.7.stateless`). The WIT
    /// has no field for it, and build metadata does not change what a version means, so every
    /// plugin built against 0.1.0 or 0.2.0 can say it without a new WIT package.
    pub fn declares_stateless(&self) -> bool {
        self.version.split_once('+').is_some_and(|(_, build)| build.split('.').any(|id| id == STATELESS))
    }
}

/// The build metadata identifier by which a plugin declares itself stateless.
pub const STATELESS: &str = "stateless";

/// How a plugin's calls get their instance: the plugin's declaration decides
/// ([`Plugin::with_declared_instances`](super::Plugin::with_declared_instances)); tests and the
/// bench pick one.
///
/// ## Warning
/// `Reused` trades isolation for speed: guest memory and globals survive from one object to
/// the next, so a plugin that keeps anything between calls (a cache, a counter, a mutated
/// default) makes an object's verdict depend on the objects before it. It is honoured only for
/// plugins that declare themselves stateless ([`PluginInfo::declares_stateless`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstancePolicy {
    /// A fresh instance for every call, dropped afterwards (the default): nothing a call leaves
    /// behind can reach the next one.
    #[default]
    Fresh,
    /// Instances kept between calls and reset: each call gets a full fuel budget, a fresh
    /// deadline, empty output captures and the memory-denied flag cleared. Guest memory and
    /// globals are *not* reset. An instance is dropped, and the next call instantiates anew,
    /// after any failed call (a trap, fuel, the deadline, memory, the guest's own error) and
    /// after `MAX_CALLS_PER_KEPT_INSTANCE` calls.
    Reused,
}

impl std::fmt::Display for InstancePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fresh => "fresh",
            Self::Reused => "reused",
        })
    }
}

/// The verdict of `preserve`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this object.
    Apply(Value),
    /// Delete and recreate, for this reason.
    Recreate(String),
    /// Leave the object alone, for this reason.
    Skip(String),
}

/// The outcome of one call, with the fuel it burnt (for metrics and benchmarks).
#[derive(Debug, Clone)]
pub struct Called<T> {
    /// What the hook returned.
    pub value: T,
    /// Fuel consumed.
    pub fuel: u64,
}

/// The (group, kind) of an object; the core group is "".
pub fn group_kind(obj: &Value) -> (String, String) {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    (group.to_string(), kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_kind_splits_the_api_version() {
        assert_eq!(
            group_kind(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})),
            ("apps".into(), "Deployment".into())
        );
        assert_eq!(group_kind(&json!({"apiVersion": "v1", "kind": "Service"})), (String::new(), "Service".into()));
    }
}
