//! The core's vocabulary: object keys, resolved resources, and the result of one sync.

use std::time::Duration;

use serde::Serialize;

use super::error::SyncError;

/// Group, version and resource (plural) of a kind, as the downstream API serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Gvr {
    /// API group; "" for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name, such as `configmaps`.
    pub resource: String,
}

/// A kind resolved against the downstream API (by discovery, at the edge).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Resource {
    /// Group, version, resource.
    pub gvr: Gvr,
    /// The kind, such as `ConfigMap`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

impl Resource {
    /// `group/version` or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.gvr.group.is_empty() {
            self.gvr.version.clone()
        } else {
            format!("{}/{}", self.gvr.group, self.gvr.version)
        }
    }
}

/// Identifies one downstream object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DownstreamKey {
    /// Group, version, resource.
    pub gvr: Gvr,
    /// Kind, for messages.
    pub kind: String,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl DownstreamKey {
    /// The key of `name` in `namespace` for a resolved resource.
    pub fn new(resource: &Resource, namespace: Option<&str>, name: &str) -> Self {
        Self {
            gvr: resource.gvr.clone(),
            kind: resource.kind.clone(),
            namespace: namespace.filter(|_| resource.namespaced).map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for DownstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// The object did not exist downstream and was created.
    Created,
    /// The object was updated in place.
    Updated,
    /// The object was deleted and created again (an immutable field changed).
    Recreated,
    /// Nothing significant changed; nothing was written.
    Unchanged,
    /// The object is gone downstream.
    Deleted,
    /// A delete was accepted; finalizers still hold the object.
    Deleting,
    /// Nothing was written, on purpose or because of the error reported with it.
    Skipped,
}

impl Operation {
    /// A lowercase label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Recreated => "recreated",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::Deleting => "deleting",
            Self::Skipped => "skipped",
        }
    }

    /// Whether this operation wrote to the downstream API.
    pub fn wrote(self) -> bool {
        matches!(self, Self::Created | Self::Updated | Self::Recreated | Self::Deleted | Self::Deleting)
    }
}

/// The result of syncing one object.
#[derive(Debug)]
pub struct SyncResult {
    /// The object.
    pub key: Option<DownstreamKey>,
    /// What happened.
    pub operation: Operation,
    /// Write attempts made (0 when nothing was written).
    pub attempts: u32,
    /// Field paths involved in conflicts, as JSON pointers.
    pub conflicts: Vec<String>,
    /// When the caller should try again, if it should.
    pub retry_after: Option<Duration>,
    /// What went wrong, if anything. `skipped` with no error is a deliberate skip.
    pub error: Option<SyncError>,
    /// Why the object was skipped, when a rule said so.
    pub reason: Option<String>,
    /// Fields changed downstream by someone else since downsync's last write, with what the
    /// drift policy did about them.
    pub drift: Vec<crate::sync::drift::DriftedField>,
    /// Server-side dry runs made to tell a drift from what the server adds at a write.
    pub dry_runs: u32,
}

impl SyncResult {
    pub(crate) fn new(key: Option<DownstreamKey>, operation: Operation) -> Self {
        Self {
            key,
            operation,
            attempts: 0,
            conflicts: Vec::new(),
            retry_after: None,
            error: None,
            reason: None,
            drift: Vec::new(),
            dry_runs: 0,
        }
    }

    /// Whether the sync failed.
    pub fn is_err(&self) -> bool {
        self.error.is_some()
    }
}
