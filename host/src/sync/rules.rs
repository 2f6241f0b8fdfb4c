//! The seam between the core and the rules: what the syncer asks of transformation and
//! preservation rules. The plugin runtime implements it with WASM components; the core ships
//! [`NoRules`].

use serde_json::Value;

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
}

/// Transformation, preservation and diff-ignore rules, per kind.
///
/// Implementations must be deterministic: the same inputs give the same output, so that the
/// syncer's no-op detection holds.
pub trait Rules: Send + Sync {
    /// Rewrites the desired object for downstream.
    fn transform(&self, desired: Value) -> Result<Value, RuleError>;

    /// Given the live downstream object and the object the core built (desired, transformed,
    /// with the built-in preservation applied), decides what to write.
    fn preserve(&self, existing: &Value, desired: Value) -> Result<RuleDecision, RuleError>;

    /// JSON pointer patterns (`*` matches one segment) the differ must not compare.
    fn ignore_paths(&self, group: &str, kind: &str) -> Result<Vec<String>, RuleError>;

    /// A fingerprint of the loaded rules. It is part of the desired hash, so that a rule change
    /// (a hot reload) makes every object be looked at again.
    fn fingerprint(&self) -> String;

    /// A fingerprint of the rules that apply to one kind. It is what the desired hash takes,
    /// so that swapping a Deployment rule makes only Deployments be looked at again, not
    /// every object of every kind. Defaults to the whole [`Rules::fingerprint`].
    fn fingerprint_for(&self, group: &str, kind: &str) -> String {
        let _ = (group, kind);
        self.fingerprint()
    }
}

/// No rules: the desired object passes through and only the built-in preservation applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRules;

impl Rules for NoRules {
    fn transform(&self, desired: Value) -> Result<Value, RuleError> {
        Ok(desired)
    }

    fn preserve(&self, _existing: &Value, desired: Value) -> Result<RuleDecision, RuleError> {
        Ok(RuleDecision::Apply(desired))
    }

    fn ignore_paths(&self, _group: &str, _kind: &str) -> Result<Vec<String>, RuleError> {
        Ok(Vec::new())
    }

    fn fingerprint(&self) -> String {
        String::new()
    }
}

impl<R: Rules + ?Sized> Rules for std::sync::Arc<R> {
    fn transform(&self, desired: Value) -> Result<Value, RuleError> {
        (**self).transform(desired)
    }
    fn preserve(&self, existing: &Value, desired: Value) -> Result<RuleDecision, RuleError> {
        (**self).preserve(existing, desired)
    }
    fn ignore_paths(&self, group: &str, kind: &str) -> Result<Vec<String>, RuleError> {
        (**self).ignore_paths(group, kind)
    }
    fn fingerprint(&self) -> String {
        (**self).fingerprint()
    }
    fn fingerprint_for(&self, group: &str, kind: &str) -> String {
        (**self).fingerprint_for(group, kind)
    }
}
