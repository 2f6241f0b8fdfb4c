//! Digests as downsync writes them: lowercase hex, and the sha256 that names a component.

use sha2::{Digest, Sha256};

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, lowercase hex: how a component is named in pins, promote markers and
/// the status view.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
