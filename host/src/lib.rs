//! downsync: the downstream half of a multi-cluster syncer.
//!
//! It takes the desired objects of an upstream control plane and creates, updates and deletes
//! them in a downstream cluster, keeping the fields that belong downstream.
//!
//! Arrows point inward: `cli` -> `app` (the program) -> `kube` (the edges) and `plugin` (the
//! wasmtime runtime) -> `sync` (the core). The core knows neither a kube client nor wasmtime.

pub mod app;
pub mod kube;
pub mod plugin;
pub mod sync;
