//! The two WIT package versions behind one call: a component linked against either, its
//! instance, a hook to call on it and what the hook returned, mapped to the 0.2.0 shapes.

use wasmtime::Store;

use super::bindings::v0_1::downsync::rules::types as wit01;
use super::bindings::v0_2::downsync::rules::types as wit;
use super::bindings::{v0_1, v0_2};
use super::host::CallState;
use super::types::{Hooks, WitVersion};
use crate::sync::intent::Intent;

/// A component linked against one of the WIT package versions, ready to instantiate.
#[derive(Clone)]
pub(crate) enum RulePre {
    /// `downsync:rules@0.1.0`.
    V0_1(v0_1::RulePre<CallState>),
    /// `downsync:rules@0.2.0`.
    V0_2(v0_2::RulePre<CallState>),
}

/// One instance of a component.
pub(super) enum Bound {
    V0_1(v0_1::Rule),
    V0_2(v0_2::Rule),
}

impl RulePre {
    pub(super) fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Self::V0_1(pre) => Bound::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Bound::V0_2(pre.instantiate(store)?),
        })
    }
}

/// What a hook returned, whichever the WIT version.
pub(super) enum Raw {
    Info(RawInfo),
    Text(Result<String, String>),
    Decision(Result<wit::Decision, String>),
    Paths(Vec<String>),
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
            Bound::V0_2(rule) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_2(r.call_describe(store)?)),
                    Hook::Transform(d, intent) => Raw::Text(r.call_transform(store, d, intent)?),
                    Hook::Preserve(e, d, intent) => Raw::Decision(r.call_preserve(store, e, d, intent)?),
                    Hook::IgnorePaths(g, k) => Raw::Paths(r.call_ignore_paths(store, g, k)?),
                }
            }
            Bound::V0_1(rule) => {
                let r = rule.downsync_rules_rules();
                match *self {
                    Hook::Describe => Raw::Info(RawInfo::from_v0_1(r.call_describe(store)?)),
                    Hook::Transform(d, _) => Raw::Text(r.call_transform(store, d)?),
                    Hook::Preserve(e, d, _) => Raw::Decision(r.call_preserve(store, e, d)?.map(|d| match d {
                        wit01::Decision::Apply(t) => wit::Decision::Apply(t),
                        wit01::Decision::Recreate(t) => wit::Decision::Recreate(t),
                        wit01::Decision::Skip(t) => wit::Decision::Skip(t),
                    })),
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
