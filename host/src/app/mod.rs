//! The program: `downsync run` and `downsync diff` over the core, the plugin runtime and the
//! Kubernetes edges. Configuration, start-up, the sync loop, metrics and the HTTP endpoints.

pub mod config;
pub mod connectivity;
pub mod controller;
pub mod diff;
pub mod error_policy;
pub mod explain;
pub mod features;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod namespaces;
pub mod ops_client;
pub mod reconcile;
pub mod replay;
pub mod startup;
pub mod triggers;

pub use config::{ResourceConfig, RunConfig};
pub use controller::{RunOptions, Summary, run};
