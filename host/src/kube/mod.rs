//! The Kubernetes edges: the kube-rs implementation of the core's [`Downstream`] trait, and the
//! translation of API statuses into the core's error classes.
//!
//! [`Downstream`]: crate::sync::Downstream

pub mod clients;
pub mod downstream;
pub mod errors;
mod events;
pub mod lists;
pub mod pod_events;
pub mod reconnect;
pub mod upstream;

pub use downstream::KubeDownstream;
pub use upstream::Upstream;
