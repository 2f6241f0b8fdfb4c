//! The sync core: decides what to write downstream. No kube client and no wasmtime in here.
//!
//! The pieces are plain functions over `serde_json::Value` (desired, differ, preservation,
//! write, causes, pointers, ownership) plus the syncer, which talks to the downstream cluster
//! only through the narrow [`Downstream`] trait that the `kube` edge
//! implements.

pub mod causes;
pub mod config;
pub mod deletion;
pub mod desired;
pub mod differ;
pub mod drift;
pub mod error;
pub mod intent;
pub mod managers;
pub mod mapping;
pub mod ownership;
pub mod pointer;
pub mod preservation;
pub mod queue;
pub mod recovery;
pub mod rules;
pub mod state;
pub mod syncer;
pub mod types;
pub mod workspaces;
pub mod write;
pub mod write_loop;

pub use config::{DownstreamConfig, ImmutablePolicy, Ownership, Propagation, UpdateStrategy};
pub use drift::{DriftAction, DriftPolicy};
pub use error::{ApiError, SyncError};
pub use intent::Intent;
pub use mapping::NamespaceMapping;
pub use queue::{RateLimit, Shares, WorkQueue};
pub use rules::{NoRules, RuleDecision, RuleError, RuleSet, Rules};
pub use state::{ResourceState, StateCache};
pub use syncer::{Downstream, Syncer};
pub use types::{DownstreamKey, Gvr, Operation, Resource, SyncResult};
pub use write::Write;
