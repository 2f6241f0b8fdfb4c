//! The WASM rule runtime: wasmtime engines, precompiled and tiered components, a fresh
//! sandboxed store per call. Nothing outside this module sees a `Store`.
//!
//! Outside code uses the items re-exported here and three tool modules ([`fixtures`] for
//! `downsync plugin test`, [`scaffold`] for `downsync plugin new`, [`projection`] for the
//! bench). Inside, imports point one way, from the ground floor up:
//! - plain types: `types`, `error`, `digest`, `files`, `output`, `projection`, `imports`,
//!   `journal`;
//! - the runtime: `bindings`, `capture`, `host`, `wasi`, `dispatch`, `describe`, `priority`,
//!   `reuse`, `cache`, `tiering`, `engine`, `contract`,
//!   `component` (a loaded [`Plugin`]), `session`;
//! - the lifecycle: `fixtures`, `rollout`, `settings`, `metrics`, `plugin_set`, `registry`
//!   (the [`PluginRegistry`] the syncer calls), `verdicts` (one verdict for many replicas),
//!   `reload` (the [`Reloader`] that keeps it
//!   current with the plugin folder), `status` and `watch` (its status view, its folder watch).

mod bindings;
mod cache;
mod candidates;
mod capped;
mod capture;
mod component;
mod contract;
mod describe;
mod digest;
mod dispatch;
mod engine;
mod error;
mod files;
pub mod fixtures;
mod host;
mod imports;
mod journal;
mod memory;
mod metrics;
pub mod oci;
mod output;
mod plugin_set;
mod priority;
pub mod projection;
mod registry;
mod reload;
mod reuse;
mod rollout;
pub mod scaffold;
mod session;
mod settings;
mod status;
mod tiering;
mod types;
mod verdicts;
mod wasi;
mod watch;

pub(crate) use cache::{check_owner, ensure_private_dir, write_private_atomically};
pub use component::Plugin;
pub use digest::sha256_hex;
pub use engine::{EngineConfig, PluginEngine};
pub use error::{CallFailure, Error, Oversize, Result, Violation};
pub use files::{DEFAULT_MAX_COMPONENT_BYTES, MAX_FIXTURE_FILE_BYTES, read_component};
pub use journal::{DEFAULT_MAX_OBJECTS as DEFAULT_EXPLAIN_OBJECTS, Entry as JournalEntry, Journal};
pub use memory::memory_per_call;
pub use metrics::{LastError, Metrics};
pub use plugin_set::{Member, PluginSet, Shadow};
pub use registry::{PluginRegistry, RuleSnapshot};
pub use reload::{Notice, Notifier, Reloader};
pub use rollout::{RolloutMode, RolloutSettings, Stage, Stats, Trial};
pub use session::Session;
pub use settings::{FailurePolicy, PluginSettings, RegistryConfig};
pub use status::PluginStatus;
pub use tiering::Tier;
pub use types::{Called, Decision, Hooks, InstancePolicy, KindPattern, PluginInfo, STATELESS, WitVersion, group_kind};
pub use verdicts::{TrialCounts, TrialDecision, VerdictBoard};
pub use watch::{WatchConfig, WatchHandle};
