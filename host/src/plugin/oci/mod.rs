//! Plugins from OCI registries: `plugins.<name>.source: oci://…`, pulled as CNCF Wasm OCI
//! artifacts, verified against cosign public keys before they are compiled, cached on disk by
//! digest, and followed for new digests, each of which goes the way of a file dropped into the
//! plugins folder. Inside, from the ground floor up: `error`, `source`, `state`, `artifact`,
//! `signature`, `access`; then `pull`, `push` and `store`; then `follow`, which feeds the
//! [`Reloader`](super::Reloader).

mod access;
mod artifact;
mod error;
mod follow;
mod pull;
mod push;
mod signature;
mod source;
mod state;
mod store;

pub use access::{RegistrySettings, docker_config};
pub use error::{PullError, PullFailure};
pub use follow::{FollowHandle, Followed, Sources};
pub use pull::{Pull, Pulled};
pub use push::push;
pub use signature::{TrustedKey, VerifyPolicy};
pub use source::Source;
pub use state::{PulledEntry, SourceState};
