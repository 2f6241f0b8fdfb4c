//! The sync core: decides what to write downstream. No kube client and no wasmtime in here.
//!
//! The pieces are plain functions over `serde_json::Value` (differ, preservation, pointers,
//! ownership) plus the syncer, which talks to the downstream cluster only through the narrow
//! [`Downstream`](syncer::Downstream) trait that the `kube` edge implements.

pub mod differ;
pub mod pointer;
pub mod preservation;
