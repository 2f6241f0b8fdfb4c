//! Guest SDK for downsync rule plugins (`downsync:rules@0.2.0`): WIT bindings, hook defaults,
//! intent and JSON helpers.
//!
//! A rule is a type that implements [`Rule`]; [`export_rule!`] turns it into the component's
//! exports. [`Info::hooks`] lists the hooks the rule implements (the host never calls the
//! others) and [`Info::reads`] the parts of an object it reads (the host sends only those).
//! Hooks a plugin leaves out get the defaults: `transform` and `preserve` pass the desired
//! object through, `ignore_paths` ignores nothing.
//!
//! ```ignore
//! struct Keep;
//! impl downsync_plugin_sdk::Rule for Keep {
//!     fn describe() -> downsync_plugin_sdk::Info {
//!         downsync_plugin_sdk::Info::new("keep", "0.2.0")
//!             .kind("", "Service")
//!             .scope("/spec/clusterIP")
//!             .hooks(&[Hook::Preserve])
//!             .reads("/spec")
//!     }
//!     fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
//!         pointer::copy_if_absent(&existing, &mut desired, "/spec/clusterIP");
//!         Ok(Decision::Apply(desired))
//!     }
//! }
//! downsync_plugin_sdk::export_rule!(Keep);
//! ```

// The generated export macro names the runtime through this crate, so plugins need no direct
// wit-bindgen dependency.
extern crate self as downsync_plugin_sdk;

pub mod kinds;
pub mod list;
pub mod log;
pub mod pointer;

pub use serde_json::{self, Value, json};

/// Bindings generated from `wit/rules.wit`.
#[allow(missing_docs, unreachable_pub, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "rule",
        path: "../../wit/rules.wit",
        pub_export_macro: true,
        export_macro_name: "export_rule_world",
        default_bindings_module: "downsync_plugin_sdk::bindings",
        runtime_path: "downsync_plugin_sdk::__private::wit_bindgen::rt",
    });
}

pub use intent::Intent;

mod intent;

/// A hook a rule implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// [`Rule::transform`].
    Transform,
    /// [`Rule::preserve`].
    Preserve,
    /// [`Rule::ignore_paths`].
    IgnorePaths,
}

/// What a plugin says about itself: name, version, kinds handled, the fields it may write,
/// the hooks it implements and the parts of an object it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Unique plugin name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// (group, kind) patterns; `*` matches anything, the core group is "".
    pub kinds: Vec<(String, String)>,
    /// JSON pointers the plugin may write; `*` matches one segment.
    pub scope: Vec<String>,
    /// The hooks it implements; every hook unless [`Info::hooks`] says otherwise.
    pub hooks: Vec<Hook>,
    /// JSON pointers (no wildcards) of the parts of an object it reads; empty: all of it.
    pub reads: Vec<String>,
}

impl Default for Info {
    fn default() -> Self {
        Self {
            name: String::new(),
            version: String::new(),
            kinds: Vec::new(),
            scope: Vec::new(),
            hooks: vec![Hook::Transform, Hook::Preserve, Hook::IgnorePaths],
            reads: Vec::new(),
        }
    }
}

impl Info {
    /// Starts an `Info` with a name and version.
    #[must_use]
    pub fn new(name: &str, version: &str) -> Self {
        Self { name: name.into(), version: version.into(), ..Self::default() }
    }

    /// The hooks the rule implements; the host never calls the others, so an object costs
    /// nothing in a hook the rule leaves to the default.
    #[must_use]
    pub fn hooks(mut self, hooks: &[Hook]) -> Self {
        self.hooks = hooks.to_vec();
        self
    }

    /// Adds a part of the object the rule reads (a JSON pointer such as `/spec`). With any
    /// reads, the hooks get only those parts (plus apiVersion, kind, name and namespace), and
    /// what they return replaces exactly those parts. Every scope pattern must lie inside one.
    #[must_use]
    pub fn reads(mut self, pointer: &str) -> Self {
        self.reads.push(pointer.into());
        self
    }

    /// Declares the rule stateless: nothing it keeps between calls (no static it writes, no
    /// cache) changes what a later call returns. The host may then run it in a reused instance
    /// when the operator configures `instances: reused`; without this, every call gets a fresh
    /// one whatever the setting. It is said in the version's build metadata (`0.2.0` becomes
    /// `0.2.0+stateless`), which the WIT already carries.
    #[must_use]
    pub fn stateless(mut self) -> Self {
        let sep = if self.version.contains('+') { '.' } else { '+' };
        self.version = format!("{}{sep}stateless", self.version);
        self
    }

    /// Adds a handled group/kind pattern.
    #[must_use]
    pub fn kind(mut self, group: &str, kind: &str) -> Self {
        self.kinds.push((group.into(), kind.into()));
        self
    }

    /// Adds a JSON pointer the plugin may write.
    #[must_use]
    pub fn scope(mut self, pointer: &str) -> Self {
        self.scope.push(pointer.into());
        self
    }
}

/// The verdict of [`Rule::preserve`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this object.
    Apply(Value),
    /// Delete and recreate the downstream object, for this reason.
    Recreate(String),
    /// Leave the downstream object alone, for this reason.
    Skip(String),
}

/// A rule plugin. Only [`Rule::describe`] is required.
pub trait Rule {
    /// Name, version, kinds and write scope.
    fn describe() -> Info;

    /// Rewrites the desired (upstream) object for downstream. `intent` tells the fields a
    /// client asked for upstream from those the upstream server filled in.
    fn transform(desired: Value, intent: &Intent) -> Result<Value, String> {
        let _ = intent;
        Ok(desired)
    }

    /// Decides what to write, given the live downstream object and the desired one.
    fn preserve(existing: Value, desired: Value, intent: &Intent) -> Result<Decision, String> {
        let _ = (existing, intent);
        Ok(Decision::Apply(desired))
    }

    /// JSON pointers the differ must not compare for this group and kind.
    fn ignore_paths(group: &str, kind: &str) -> Vec<String> {
        let _ = (group, kind);
        Vec::new()
    }
}

/// Exports a [`Rule`] implementation as the component's `rules` interface.
///
/// The exports exist only when building for wasm: on the host the plugin crate is a plain
/// library, so its logic can be unit-tested natively (and a native cdylib cannot carry the
/// component model's export names).
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __DownsyncRuleExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::downsync::rules::rules::Guest for __DownsyncRuleExport {
            fn describe() -> $crate::bindings::downsync::rules::types::PluginInfo {
                $crate::__private::describe::<$rule>()
            }
            fn transform(
                desired: ::std::string::String,
                intent: $crate::bindings::downsync::rules::types::Intent,
            ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                $crate::__private::transform::<$rule>(&desired, intent)
            }
            fn preserve(
                existing: ::std::string::String,
                desired: ::std::string::String,
                intent: $crate::bindings::downsync::rules::types::Intent,
            ) -> ::std::result::Result<$crate::bindings::downsync::rules::types::Decision, ::std::string::String> {
                $crate::__private::preserve::<$rule>(&existing, &desired, intent)
            }
            fn ignore_paths(group: ::std::string::String, kind: ::std::string::String) -> ::std::vec::Vec<::std::string::String> {
                <$rule as $crate::Rule>::ignore_paths(&group, &kind)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export_rule_world!(__DownsyncRuleExport with_types_in $crate::bindings);
    };
}

/// Glue used by [`export_rule!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::{Decision, Hook, Intent, Rule, Value};
    use crate::bindings::downsync::rules::types as wit;

    pub use wit_bindgen;

    pub fn describe<R: Rule>() -> wit::PluginInfo {
        let info = R::describe();
        let hooks = info.hooks.iter().fold(wit::Hooks::empty(), |acc, h| {
            acc | match h {
                Hook::Transform => wit::Hooks::TRANSFORM,
                Hook::Preserve => wit::Hooks::PRESERVE,
                Hook::IgnorePaths => wit::Hooks::IGNORE_PATHS,
            }
        });
        wit::PluginInfo {
            name: info.name,
            version: info.version,
            kinds: info.kinds.into_iter().map(|(group, kind)| wit::KindPattern { group, kind }).collect(),
            scope: info.scope,
            hooks,
            reads: info.reads,
        }
    }

    fn intent(raw: wit::Intent) -> Intent {
        match raw {
            wit::Intent::Unknown => Intent::unknown(),
            wit::Intent::ServerSet(paths) => Intent::server_set(paths),
        }
    }

    fn parse(what: &str, text: &str) -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
    }

    fn render(v: &Value) -> Result<String, String> {
        serde_json::to_string(v).map_err(|e| format!("cannot serialise result: {e}"))
    }

    pub fn transform<R: Rule>(desired: &str, raw: wit::Intent) -> Result<String, String> {
        render(&R::transform(parse("desired", desired)?, &intent(raw))?)
    }

    pub fn preserve<R: Rule>(existing: &str, desired: &str, raw: wit::Intent) -> Result<wit::Decision, String> {
        Ok(match R::preserve(parse("existing", existing)?, parse("desired", desired)?, &intent(raw))? {
            Decision::Apply(v) => wit::Decision::Apply(render(&v)?),
            Decision::Recreate(reason) => wit::Decision::Recreate(reason),
            Decision::Skip(reason) => wit::Decision::Skip(reason),
        })
    }
}
