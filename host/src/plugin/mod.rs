//! The WASM rule runtime: one wasmtime engine, precompiled components, a fresh sandboxed store
//! per call. Nothing outside this module sees a `Store`.

mod bindings;
pub mod engine;
pub mod error;
mod host;
pub mod component;

pub use engine::{EngineConfig, PluginEngine};
pub use error::{Error, Result};
pub use component::{Decision, KindPattern, Plugin, PluginInfo};
