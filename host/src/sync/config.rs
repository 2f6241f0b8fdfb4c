//! How the syncer writes downstream: retries, strategy, extra paths, propagation, ownership.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How an existing object is updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "type", deny_unknown_fields)]
pub enum UpdateStrategy {
    /// PUT the whole object with its resourceVersion (optimistic concurrency). Fields the
    /// desired object and the preservation rules do not carry are dropped.
    #[default]
    Replace,
    /// JSON merge patch with the resourceVersion. Fields only downstream survive; labels,
    /// annotations and `data`/`binaryData` keys removed upstream are removed.
    Merge,
    /// Strategic merge patch (built-in kinds only): like `merge`, lists merged by their keys.
    StrategicMerge,
    /// Server-side apply with a field manager; other managers' fields survive.
    ServerSideApply {
        /// The field manager name.
        #[serde(default = "default_field_manager")]
        field_manager: String,
        /// Take over fields owned by other managers instead of failing with a conflict.
        #[serde(default)]
        force: bool,
    },
}

fn default_field_manager() -> String {
    "downsync".into()
}

/// Deletion propagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub enum Propagation {
    /// The object goes at once; the garbage collector removes dependents afterwards.
    #[default]
    Background,
    /// Dependents go first; the object waits with the `foregroundDeletion` finalizer.
    Foreground,
    /// Dependents are left behind.
    Orphan,
}

/// What to do when an update is refused because an immutable field changed, unless a rule
/// already decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ImmutablePolicy {
    /// Leave the object as it is and report the fields.
    #[default]
    Skip,
    /// Delete (UID precondition), wait until gone, create.
    Recreate,
}

/// Who downsync is, as stamped on the objects it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Ownership {
    /// Who writes: the value of the `downsync.dev/managed-by` label. Not a setting: always
    /// `downsync`; instances are told apart by `target`.
    #[serde(skip)]
    pub identity: String,
    /// The sync target (upstream) this instance syncs from; label-safe too.
    pub target: String,
    /// Take over objects that exist downstream without our stamp.
    ///
    /// ## Warning
    /// Adopted objects are then updated and, when gone upstream, deleted.
    pub adopt: bool,
}

impl Default for Ownership {
    fn default() -> Self {
        Self { identity: "downsync".into(), target: "default".into(), adopt: false }
    }
}

/// Settings of the downstream writer. Deserialised once and passed down; only the strategy,
/// the ownership stamp, deletion propagation and the immutable-field policy are settings a user
/// sees (`sync:`), the
/// rest are fixed for users and set by tests and the tools (`downsync diff` never waits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Retries after a 409 conflict.
    #[serde(skip)]
    pub conflict_retries: u32,
    /// First backoff delay; doubles per retry, with full jitter.
    #[serde(skip)]
    pub backoff_base: Duration,
    /// Largest backoff delay.
    #[serde(skip)]
    pub backoff_max: Duration,
    /// Update strategy.
    pub strategy: UpdateStrategy,
    /// Extra JSON pointer patterns whose downstream value is kept.
    #[serde(skip)]
    pub preserve_paths: Vec<String>,
    /// Extra JSON pointer patterns the differ ignores.
    #[serde(skip)]
    pub ignore_paths: Vec<String>,
    /// How a delete propagates to the downstream object's dependents: `Background` (the
    /// default), `Foreground` (the dependents go first) or `Orphan` (they stay).
    pub propagation: Propagation,
    /// Ownership stamp and adoption.
    pub ownership: Ownership,
    /// What to do on an immutable-field refusal.
    pub on_immutable: ImmutablePolicy,
    /// How long a recreate waits for the old object to go.
    #[serde(skip)]
    pub recreate_timeout: Duration,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            conflict_retries: 8,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            strategy: UpdateStrategy::default(),
            preserve_paths: Vec::new(),
            ignore_paths: Vec::new(),
            propagation: Propagation::default(),
            ownership: Ownership::default(),
            on_immutable: ImmutablePolicy::default(),
            recreate_timeout: Duration::from_secs(60),
        }
    }
}
