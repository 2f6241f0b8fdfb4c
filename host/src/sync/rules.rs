//! The seam between the core and the rules: what the syncer asks of transformation and
//! preservation rules. The plugin runtime implements it with WASM components; the core ships
//! [`NoRules`].
//!
//! The syncer takes one [`Rules::snapshot`] per apply, so that one write never mixes two
//! versions of a rule set that a hot reload swapped in half-way. The hooks are async so that an
//! implementation can run them off the async runtime's worker threads (a WASM call can take
//! milliseconds; the plugin runtime runs them on a bounded blocking pool).

use std::future::Future;

use serde_json::Value;

use super::intent::Intent;

/// What the rules decide for an update.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleDecision {
    /// Write this object.
    Apply(Value),
    /// Delete the downstream object (UID precondition), wait until gone, create it again.
    Recreate(String),
    /// Leave the downstream object alone and report why.
    Skip(String),
}

/// A rule failed; the object must not be written (fail-closed), and the failure is reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule} failed on {object}: {message}")]
pub struct RuleError {
    /// The rule (plugin) name.
    pub rule: String,
    /// The object, as `Kind namespace/name`.
    pub object: String,
    /// What went wrong, naming the field where known.
    pub message: String,
    /// Whether the same call can succeed later (a deadline under load, a runtime hiccup).
    /// A rule that trapped, ran out of fuel or rejected the object will do so again on the
    /// same input: the syncer parks such an object until it or the rules change.
    pub retryable: bool,
}

/// A source of rules that can change over time (a hot reload swaps them).
pub trait Rules: Send + Sync {
    /// One immutable version of the rules.
    type Set: RuleSet;

    /// The rules in force now. Holding the snapshot keeps that version; it never changes.
    fn snapshot(&self) -> Self::Set;
}

/// One version of the transformation, preservation and diff-ignore rules, per kind.
///
/// Implementations must be deterministic: the same inputs give the same output, so that the
/// syncer's no-op detection holds.
pub trait RuleSet: Send + Sync {
    /// A fingerprint of the rules that apply to one kind. It is part of the desired hash, so
    /// that swapping a Deployment rule makes only Deployments be looked at again.
    fn fingerprint_for(&self, group: &str, kind: &str) -> String;

    /// Whether a new version of the rules for one kind is on trial beside the active one. The
    /// syncer then runs the rules even for an object that has not changed, so the trial sees
    /// every object; the result is compared and the write is still decided by the active rules.
    fn shadowing(&self, group: &str, kind: &str) -> bool {
        let _ = (group, kind);
        false
    }

    /// Rewrites the desired object for downstream. `intent` says which of the upstream
    /// object's fields a client asked for.
    fn transform(&self, desired: Value, intent: &Intent) -> impl Future<Output = Result<Value, RuleError>> + Send;

    /// Given the live downstream object and the object the core built (desired, transformed,
    /// with the built-in preservation applied), decides what to write.
    fn preserve(
        &self,
        existing: &Value,
        desired: Value,
        intent: &Intent,
    ) -> impl Future<Output = Result<RuleDecision, RuleError>> + Send;

    /// JSON pointer patterns (`*` matches one segment) the differ must not compare.
    fn ignore_paths(&self, group: &str, kind: &str) -> impl Future<Output = Result<Vec<String>, RuleError>> + Send;
}

/// No rules: the desired object passes through and only the built-in preservation applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRules;

impl Rules for NoRules {
    type Set = NoRules;

    fn snapshot(&self) -> NoRules {
        NoRules
    }
}

impl RuleSet for NoRules {
    fn fingerprint_for(&self, _group: &str, _kind: &str) -> String {
        String::new()
    }

    async fn transform(&self, desired: Value, _intent: &Intent) -> Result<Value, RuleError> {
        Ok(desired)
    }

    async fn preserve(&self, _existing: &Value, desired: Value, _intent: &Intent) -> Result<RuleDecision, RuleError> {
        Ok(RuleDecision::Apply(desired))
    }

    async fn ignore_paths(&self, _group: &str, _kind: &str) -> Result<Vec<String>, RuleError> {
        Ok(Vec::new())
    }
}

impl<R: Rules + ?Sized> Rules for std::sync::Arc<R> {
    type Set = R::Set;

    fn snapshot(&self) -> R::Set {
        (**self).snapshot()
    }
}
