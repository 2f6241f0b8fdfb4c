//! The program: `downsync run` and `downsync diff` over the core, the plugin runtime and the
//! Kubernetes edges. Configuration, the sync loop, metrics and the HTTP endpoints.

pub mod config;
pub mod controller;
pub mod diff;
pub mod http;
pub mod metrics;

pub use config::{ResourceConfig, RunConfig};
pub use controller::{RunOptions, Summary, run};
