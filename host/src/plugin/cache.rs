//! The on-disk cache of precompiled components, used only when only this user can write it.
//!
//! A cached artifact is native code that wasmtime maps and runs without validating it, so
//! whoever can write the cache can run code in downsync. Two checks guard it:
//!
//! - The folder is created 0700 and must be owned by this process's user and not writable by
//!   group or others; each entry must be a regular file with the same owner and no group or
//!   other write bit. Otherwise the cache is not read or written (one warning) and plugins
//!   are compiled in memory. This is the real boundary: nobody else can put bytes there.
//! - Each entry starts with a header naming the component's sha256, the engine's
//!   compatibility hash and the sha256 of the artifact that follows; an entry whose header
//!   does not match what is asked for, or whose artifact does not hash to the header, is
//!   discarded and rebuilt. This catches entries copied or renamed over one another and
//!   corruption; it is no defence against someone who can write the folder (they could
//!   write a matching header), which is what the permission check is for.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::digest::hex;

/// The first word of every entry; a new layout gets a new version.
const MAGIC: &str = "downsync-cwasm-v1";

/// Distinguishes the temporary files of concurrent writes within one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The artifact cache in one folder.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// Set once the "cache not trusted" warning was written.
    warned: AtomicBool,
}

impl ArtifactCache {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), warned: AtomicBool::new(false) }
    }

    /// The verified artifact of component `digest` for an engine with compatibility hash
    /// `compat`, if the cache holds a trustworthy one.
    pub(crate) fn get(&self, label: &str, digest: &str, compat: &str) -> Option<Vec<u8>> {
        if !self.usable(label) {
            return None;
        }
        let path = self.path(digest, compat);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if let Err(why) = check_owner(&meta, "file") {
            tracing::warn!(plugin = label, path = %path.display(), reason = %why, "ignoring a cached artifact that is not trustworthy; recompiling");
            return None;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(plugin = label, path = %path.display(), error = %e, "cannot read a cached artifact; recompiling");
                return None;
            }
        };
        match verify(bytes, digest, compat) {
            Ok(artifact) => Some(artifact),
            Err(why) => {
                tracing::warn!(plugin = label, path = %path.display(), reason = why, "discarding a cached artifact that does not match its entry (swapped or corrupt); recompiling");
                None
            }
        }
    }

    /// Stores `artifact` for component `digest`; failures only cost a compile next time.
    pub(crate) fn put(&self, label: &str, digest: &str, compat: &str, artifact: &[u8]) {
        if !self.usable(label) {
            return;
        }
        let path = self.path(digest, compat);
        if let Err(e) = self.write_atomically(digest, &path, &entry(digest, compat, artifact)) {
            tracing::warn!(plugin = label, path = %path.display(), error = %e, "cannot cache the compiled component");
        }
    }

    fn path(&self, digest: &str, compat: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{compat}.v1.cwasm"))
    }

    /// Creates the folder (0700) if needed and checks that only this user can write it; warns
    /// once when it cannot be used.
    fn usable(&self, label: &str) -> bool {
        match ensure_private_dir(&self.dir) {
            Ok(()) => true,
            Err(why) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(plugin = label, dir = %self.dir.display(), reason = %why, "plugin artifact cache not used; compiling plugins in memory");
                }
                false
            }
        }
    }

    fn write_atomically(&self, digest: &str, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        write_private_atomically(&self.dir, digest, path, bytes)
    }
}

/// Creates `dir` (0700) if needed and checks that only this user can write it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))
        .and_then(|()| std::fs::metadata(dir).map_err(|e| format!("cannot stat it: {e}")))
        .and_then(|meta| check_owner(&meta, "folder"))
}

/// Writes `bytes` to `path` through a temporary file (0600) in `dir`, renamed into place when
/// complete, so a reader never sees a partial entry.
pub(crate) fn write_private_atomically(dir: &Path, stem: &str, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{stem}.{}.{seq}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// Refuses what another user owns or could write; for a file, also anything but a regular file
/// (a symlink could point anywhere).
pub(crate) fn check_owner(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if what == "file" && !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let me = euid();
    if meta.uid() != me {
        return Err(format!("the {what} is owned by uid {}, not by this process's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("the {what} is writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// An entry: the header line, then the artifact.
fn entry(digest: &str, compat: &str, artifact: &[u8]) -> Vec<u8> {
    let header = format!("{MAGIC} {digest} {compat} {}\n", hex(&Sha256::digest(artifact)));
    let mut out = Vec::with_capacity(header.len() + artifact.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(artifact);
    out
}

/// The artifact of an entry, if its header names `digest` and `compat` and the artifact hashes
/// to the header's sha256.
fn verify(mut bytes: Vec<u8>, digest: &str, compat: &str) -> Result<Vec<u8>, &'static str> {
    let end = bytes.iter().take(256).position(|&b| b == b'\n').ok_or("no header")?;
    let header = std::str::from_utf8(&bytes[..end]).map_err(|_| "no header")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, d, c, sha] = fields[..] else { return Err("no header") };
    if magic != MAGIC {
        return Err("not an artifact of this version");
    }
    if d != digest {
        return Err("it is the artifact of another component");
    }
    if c != compat {
        return Err("it was built by an incompatible engine");
    }
    if hex(&Sha256::digest(&bytes[end + 1..])) != sha {
        return Err("the artifact does not hash to its header");
    }
    Ok(bytes.split_off(end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_verifies_only_for_its_component_engine_and_bytes() {
        let e = entry("aa", "01", b"native code");
        assert_eq!(verify(e.clone(), "aa", "01"), Ok(b"native code".to_vec()));
        assert_eq!(verify(e.clone(), "bb", "01"), Err("it is the artifact of another component"));
        assert_eq!(verify(e.clone(), "aa", "02"), Err("it was built by an incompatible engine"));
        let mut tampered = e;
        *tampered.last_mut().expect("bytes") ^= 1;
        assert_eq!(verify(tampered, "aa", "01"), Err("the artifact does not hash to its header"));
        assert_eq!(verify(b"\x7fELF raw artifact".to_vec(), "aa", "01"), Err("no header"));
    }

    #[test]
    fn a_new_cache_folder_is_private_and_a_world_writable_one_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("downsync-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let cache = ArtifactCache::new(&base.join("private"));
        cache.put("p", "aa", "01", b"code");
        let mode = std::fs::metadata(base.join("private")).expect("created").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(cache.get("p", "aa", "01"), Some(b"code".to_vec()));

        let open = base.join("open");
        std::fs::create_dir_all(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::write(open.join("aa-01.v1.cwasm"), entry("aa", "01", b"planted")).expect("plant");
        let cache = ArtifactCache::new(&open);
        assert_eq!(cache.get("p", "aa", "01"), None, "nothing is read from a world-writable folder");
        cache.put("p", "bb", "01", b"code");
        assert!(!open.join("bb-01.v1.cwasm").exists(), "nor written to it");
        let _ = std::fs::remove_dir_all(&base);
    }
}
