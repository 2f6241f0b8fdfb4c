//! The two WIT package versions behind one call: a component linked against either, its
//! instance, a hook to call on it and what the hook returned, mapped to the 0.2.0 shapes.
//!
//! `transform` and `preserve` return text the guest chose the size of: an object, an error
//! message, a reason. Those are copied out of the guest's memory only up to their limits
//! ([`MAX_OUTPUT_BYTES`], [`MAX_MESSAGE_BYTES`]; see `capped`): a guest returning a 40 MB
//! error costs the host 1 KiB, not 40 MB (or twice that, lifted and then cut).

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Instance, InstancePre};

use super::bindings::v0_1::downsync::rules::types as wit01;
use super::bindings::v0_2::downsync::rules::types as wit;
use super::bindings::{v0_1, v0_2};
use super::capped::Capped;
use super::host::CallState;
use super::output::{MAX_MESSAGE_BYTES, MAX_OUTPUT_BYTES};
use super::types::{Hooks, WitVersion};
use crate::sync::intent::Intent;

/// A component linked against one of the WIT package versions, ready to instantiate.
#[derive(Clone)]
pub(crate) enum RulePre {
    /// `downsync:rules@0.1.0`.
    V0_1(v0_1::RulePre<CallState>, Exports),
    /// `downsync:rules@0.2.0`.
    V0_2(v0_2::RulePre<CallState>, Exports),
}

/// Where `transform` and `preserve` are in the component, looked up once: they are called
/// without the generated bindings, to read what they return in place.
#[derive(Clone)]
pub(crate) struct Exports {
    transform: ComponentExportIndex,
    preserve: ComponentExportIndex,
}

impl Exports {
    /// The two hooks of the `rules` interface of package `version` (`0.2.0`).
    fn new<T>(pre: &InstancePre<T>, version: &str) -> wasmtime::Result<Self> {
        let interface = format!("downsync:rules/rules@{version}");
        let component = pre.component();
        let find = |instance: Option<&ComponentExportIndex>, name: &str| {
            component
                .get_export_index(instance, name)
                .ok_or_else(|| wasmtime::Error::msg(format!("no export `{name}` in `{interface}`")))
        };
        let rules = find(None, &interface)?;
        Ok(Self { transform: find(Some(&rules), "transform")?, preserve: find(Some(&rules), "preserve")? })
    }
}

impl RulePre {
    /// `downsync:rules@0.2.0`'s bindings and hooks.
    pub(super) fn v0_2(pre: v0_2::RulePre<CallState>) -> wasmtime::Result<Self> {
        let exports = Exports::new(pre.instance_pre(), "0.2.0")?;
        Ok(Self::V0_2(pre, exports))
    }

    /// `downsync:rules@0.1.0`'s bindings and hooks.
    pub(super) fn v0_1(pre: v0_1::RulePre<CallState>) -> wasmtime::Result<Self> {
        let exports = Exports::new(pre.instance_pre(), "0.1.0")?;
        Ok(Self::V0_1(pre, exports))
    }

    pub(super) fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Self::V0_1(pre, exports) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                let rule = v0_1::Rule::new(&mut *store, &instance)?;
                Bound::V0_1(rule, instance, exports.clone())
            }
            Self::V0_2(pre, exports) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                let rule = v0_2::Rule::new(&mut *store, &instance)?;
                Bound::V0_2(rule, instance, exports.clone())
            }
        })
    }
}

/// One instance of a component.
pub(super) enum Bound {
    V0_1(v0_1::Rule, Instance, Exports),
    V0_2(v0_2::Rule, Instance, Exports),
}

/// What a hook returned, whichever the WIT version.
pub(super) enum Raw {
    Info(RawInfo),
    Text(Result<Json, String>),
    Decision(Result<RawDecision, String>),
    Paths(Vec<String>),
}

/// An object a hook returned: its JSON text, or only its size when that is over
/// [`MAX_OUTPUT_BYTES`] (it was not copied out of the guest).
pub(super) enum Json {
    Text(String),
    TooLarge(usize),
}

/// `preserve`'s decision, its texts read as [`Json`] and [`message`]s.
pub(super) enum RawDecision {
    Apply(Json),
    Recreate(String),
    Skip(String),
}

/// An object as it is copied out: whole up to [`MAX_OUTPUT_BYTES`], else not at all.
type ObjectStr = Capped<MAX_OUTPUT_BYTES, false>;

/// A message as it is copied out: its first [`MAX_MESSAGE_BYTES`].
type MessageStr = Capped<MAX_MESSAGE_BYTES, true>;

/// The decision variant as both WIT versions define it, its strings copied out capped.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(variant)]
enum DecisionStr {
    #[component(name = "apply")]
    Apply(ObjectStr),
    #[component(name = "recreate")]
    Recreate(MessageStr),
    #[component(name = "skip")]
    Skip(MessageStr),
}

/// A `result<json, string>`, capped.
type TextResult = (Result<ObjectStr, MessageStr>,);

/// A `result<decision, string>`, capped.
type DecisionResult = (Result<DecisionStr, MessageStr>,);

/// An object the guest returned: its text when at most [`MAX_OUTPUT_BYTES`].
fn json(s: ObjectStr) -> Json {
    if s.whole() { Json::Text(s.text) } else { Json::TooLarge(s.len) }
}

/// A message the guest returned: at most [`MAX_MESSAGE_BYTES`] of it, with the size of the
/// rest.
fn message(s: MessageStr) -> String {
    if s.whole() {
        return s.text;
    }
    // Room for the marker, so that the whole fits the limit and is not cut again.
    let room = MAX_MESSAGE_BYTES - 48;
    let at = (0..=room.min(s.text.len())).rev().find(|&i| s.text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes truncated)", &s.text[..at], s.len - at)
}

fn text_result(r: Result<ObjectStr, MessageStr>) -> Result<Json, String> {
    r.map(json).map_err(message)
}

fn decision_result(r: Result<DecisionStr, MessageStr>) -> Result<RawDecision, String> {
    match r {
        Ok(DecisionStr::Apply(s)) => Ok(RawDecision::Apply(json(s))),
        Ok(DecisionStr::Recreate(s)) => Ok(RawDecision::Recreate(message(s))),
        Ok(DecisionStr::Skip(s)) => Ok(RawDecision::Skip(message(s))),
        Err(s) => Err(message(s)),
    }
}

impl Raw {
    /// Whether the guest returned its own error (the `result`'s `err`).
    pub(super) fn is_guest_error(&self) -> bool {
        matches!(self, Raw::Text(Err(_)) | Raw::Decision(Err(_)))
    }
}

/// A hook to call and its inputs (JSON text, already projected).
pub(super) enum Hook<'a> {
    Describe,
    Transform(&'a String, &'a wit::Intent),
    Preserve(&'a String, &'a String, &'a wit::Intent),
    IgnorePaths(&'a str, &'a str),
}

impl Hook<'_> {
    pub(super) fn call(&self, store: &mut Store<CallState>, bound: &Bound) -> wasmtime::Result<Raw> {
        Ok(match bound {
            Bound::V0_2(rule, instance, exports) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_2(r.call_describe(store)?)),
                    Hook::Transform(d, intent) => {
                        let f = instance
                            .get_typed_func::<(&str, &wit::Intent), TextResult>(&mut *store, &exports.transform)?;
                        let (out,) = f.call(&mut *store, (d.as_str(), intent))?;
                        Raw::Text(text_result(out))
                    }
                    Hook::Preserve(e, d, intent) => {
                        let f = instance.get_typed_func::<(&str, &str, &wit::Intent), DecisionResult>(
                            &mut *store,
                            &exports.preserve,
                        )?;
                        let (out,) = f.call(&mut *store, (e.as_str(), d.as_str(), intent))?;
                        Raw::Decision(decision_result(out))
                    }
                    Hook::IgnorePaths(g, k) => Raw::Paths(r.call_ignore_paths(store, g, k)?),
                }
            }
            Bound::V0_1(rule, instance, exports) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_1(r.call_describe(store)?)),
                    Hook::Transform(d, _) => {
                        let f = instance.get_typed_func::<(&str,), TextResult>(&mut *store, &exports.transform)?;
                        let (out,) = f.call(&mut *store, (d.as_str(),))?;
                        Raw::Text(text_result(out))
                    }
                    Hook::Preserve(e, d, _) => {
                        let f =
                            instance.get_typed_func::<(&str, &str), DecisionResult>(&mut *store, &exports.preserve)?;
                        let (out,) = f.call(&mut *store, (e.as_str(), d.as_str()))?;
                        Raw::Decision(decision_result(out))
                    }
                    Hook::IgnorePaths(g, k) => Raw::Paths(r.call_ignore_paths(store, g, k)?),
                }
            }
        })
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Hook::Describe => "describe",
            Hook::Transform(..) => "transform",
            Hook::Preserve(..) => "preserve",
            Hook::IgnorePaths(..) => "ignore-paths",
        }
    }
}

/// `describe`'s answer before it is checked.
pub(super) struct RawInfo {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) kinds: Vec<(String, String)>,
    pub(super) scope: Vec<String>,
    pub(super) wit: WitVersion,
    pub(super) hooks: Hooks,
    pub(super) reads: Vec<String>,
}

impl RawInfo {
    fn from_v0_1(i: wit01::PluginInfo) -> Self {
        Self {
            name: i.name,
            version: i.version,
            kinds: i.kinds.into_iter().map(|k| (k.group, k.kind)).collect(),
            scope: i.scope,
            wit: WitVersion::V0_1,
            hooks: Hooks::ALL,
            reads: Vec::new(),
        }
    }

    fn from_v0_2(i: wit::PluginInfo) -> Self {
        Self {
            name: i.name,
            version: i.version,
            kinds: i.kinds.into_iter().map(|k| (k.group, k.kind)).collect(),
            scope: i.scope,
            wit: WitVersion::V0_2,
            hooks: Hooks {
                transform: i.hooks.contains(wit::Hooks::TRANSFORM),
                preserve: i.hooks.contains(wit::Hooks::PRESERVE),
                ignore_paths: i.hooks.contains(wit::Hooks::IGNORE_PATHS),
            },
            reads: i.reads,
        }
    }
}

/// The intent as the 0.2.0 WIT carries it, restricted to what the plugin reads.
pub(super) fn wit_intent(intent: &Intent, reads: &[String]) -> wit::Intent {
    match intent.within(reads) {
        Intent::Unknown => wit::Intent::Unknown,
        Intent::ServerSet(paths) => wit::Intent::ServerSet(paths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_keeps_its_start_and_says_how_much_was_left_out_within_the_limit() {
        let short = MessageStr { text: "no".into(), len: 2 };
        assert_eq!(message(short), "no");
        let long = MessageStr { text: "é".repeat(MAX_MESSAGE_BYTES / 2), len: 40 << 20 };
        let m = message(long);
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.starts_with("éé"), "{m}");
        assert!(m.ends_with(&format!("… ({} bytes truncated)", (40 << 20) - 976)), "{m}");
        assert!(matches!(json(ObjectStr { text: String::new(), len: 5 << 20 }), Json::TooLarge(n) if n == 5 << 20));
        assert!(matches!(json(ObjectStr { text: "{}".into(), len: 2 }), Json::Text(t) if t == "{}"));
    }
}
