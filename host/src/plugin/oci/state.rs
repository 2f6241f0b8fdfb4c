//! What the reloader knows of a plugin that comes from a registry: the verified component on
//! disk it loads, and the source's state for `/plugins`.

use std::path::PathBuf;

/// The state of one registry source, for `/plugins`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceState {
    /// The source as configured.
    pub source: String,
    /// The manifest digest of the version on disk.
    pub digest: Option<String>,
    /// The key that signed it (None: not verified, `verify: optional` or `off`).
    pub signer: Option<String>,
    /// When the source was last checked (a tag looked up, or a pull), in Unix seconds.
    pub last_check_unix_seconds: Option<u64>,
    /// When that check succeeded.
    pub last_success_unix_seconds: Option<u64>,
    /// Why the last check or pull failed, if it did.
    pub last_error: Option<String>,
    /// The version came from the disk cache, the registry having been out of reach since start.
    pub from_cache: bool,
}

/// A registry plugin as the reloader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PulledEntry {
    /// The verified component in the cache; None while no version has been pulled.
    pub file: Option<PathBuf>,
    /// The source's state.
    pub state: SourceState,
}
