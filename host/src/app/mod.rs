//! The daemon, `downsync run`, over the core, the plugin runtime and the Kubernetes edges:
//! configuration, start-up, the watches (with kinds served later), the queue's keys, the
//! workers and their reconcile, HA, metrics and the HTTP endpoints. The commands of the binary are in `cli/` beside it.

pub mod background;
pub mod cache;
pub mod config;
pub mod connectivity;
pub mod context;
pub mod error_policy;
pub mod explain;
pub mod features;
mod gone;
pub mod ha;
pub mod http;
pub mod http_auth;
pub mod http_tls;
pub mod initial;
pub mod keys;
pub mod kinds;
pub mod metrics;
pub mod namespaces;
pub mod packing;
pub mod reconcile;
pub mod reference;
pub mod run;
pub mod startup;
pub mod state_file;
pub mod watches;
pub mod workers;

pub use config::{ResourceConfig, RunConfig};
pub use run::{RunOptions, Summary, run};
