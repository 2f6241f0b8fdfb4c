//! The program: `downsync run` and `downsync diff` over the core, the plugin runtime and the
//! Kubernetes edges. Configuration, start-up, the sync loop, metrics and the HTTP endpoints.

pub mod background;
pub mod config;
pub mod connectivity;
pub mod context;
pub mod diff;
pub mod error_policy;
pub mod explain;
pub mod features;
pub mod ha;
pub mod http;
pub mod initial;
pub mod keys;
pub mod metrics;
pub mod namespaces;
pub mod ops_client;
pub mod packing;
pub mod reconcile;
pub mod replay;
pub mod run;
pub mod startup;
pub mod watches;
pub mod workers;

pub use config::{ResourceConfig, RunConfig};
pub use run::{RunOptions, Summary, run};
