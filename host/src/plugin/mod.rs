//! The WASM rule runtime: wasmtime engines, precompiled and tiered components, a fresh
//! sandboxed store per call. Nothing outside this module sees a `Store`.

mod bindings;
mod cache;
mod capture;
pub mod component;
pub mod contract;
mod describe;
mod digest;
mod dispatch;
pub mod engine;
pub mod error;
pub mod fixtures;
mod function_cache;
mod host;
pub mod imports;
pub mod journal;
mod output;
mod overrun;
mod priority;
pub mod projection;
pub mod registry;
pub mod reload;
mod reuse;
pub mod rollout;
pub mod scaffold;
mod session;
pub mod tiering;
mod types;
mod wasi;

pub use component::Plugin;
pub use digest::sha256_hex;
pub use engine::{EngineConfig, PluginEngine};
pub use error::{CallFailure, Error, Oversize, Result, Violation};
pub use registry::{
    FailurePolicy, LastError, Member, Metrics, PluginRegistry, PluginSet, PluginSettings, RegistryConfig, RuleSnapshot,
    Shadow,
};
pub use reload::{Notice, Notifier, PluginStatus, Reloader, WatchConfig, WatchHandle};
pub use rollout::{Promote, RolloutSettings, Stage, Trial};
pub use session::Session;
pub use tiering::Tier;
pub use types::{Called, Decision, Hooks, InstancePolicy, KindPattern, PluginInfo, STATELESS, WitVersion};
