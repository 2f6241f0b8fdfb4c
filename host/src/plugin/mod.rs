//! The WASM rule runtime: wasmtime engines, precompiled and tiered components, a fresh
//! sandboxed store per call. Nothing outside this module sees a `Store`.

mod bindings;
mod cache;
pub mod component;
pub mod contract;
pub mod engine;
pub mod error;
pub mod fixtures;
mod function_cache;
mod host;
pub mod imports;
pub mod journal;
mod overrun;
mod priority;
pub mod projection;
pub mod registry;
pub mod reload;
pub mod rollout;
pub mod scaffold;
pub mod tiering;
mod wasi;

pub use component::{Decision, Hooks, InstancePolicy, KindPattern, Plugin, PluginInfo, Session, WitVersion};
pub use engine::{EngineConfig, PluginEngine};
pub use error::{CallFailure, Error, Oversize, Result, Violation};
pub use registry::{
    FailurePolicy, LastError, Member, Metrics, PluginRegistry, PluginSet, PluginSettings, RegistryConfig, RuleSnapshot,
    Shadow,
};
pub use reload::{Notice, Notifier, PluginStatus, Reloader, WatchConfig, WatchHandle};
pub use rollout::{Promote, RolloutSettings, Stage, Trial};
pub use tiering::Tier;
