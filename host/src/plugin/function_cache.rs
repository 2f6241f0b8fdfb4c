//! Cranelift's incremental compilation cache on disk: compiled functions keyed by a hash of
//! their IR, so a new version of a plugin compiles only the functions that changed.
//!
//! A rule plugin is mostly code it shares with every other build of it, and with the other
//! plugins built by the same toolchain (the standard library, serde_json, the SDK): a changed
//! rule or a new data constant leaves those functions' IR as it was. Cranelift hashes each
//! function's IR (with calls to other functions abstracted, so shifted indices do not change
//! the key) and asks this store for the machine code it compiled before; only misses go
//! through the backend. wasm-to-IR translation and linking still run, so a hit is cheaper, not
//! free.
//!
//! The entries are native code, so the same trust rules as the artifact cache apply (see
//! `plugin::cache`): a private folder owned by this user, regular files with no group or other
//! write bit, and a header with the sha256 of what follows, checked on every read. A missing,
//! foreign or corrupt entry is a miss: the function is compiled again.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use sha2::{Digest, Sha256};

use super::cache::{check_owner, ensure_private_dir, write_private_atomically};
use super::digest::hex;

/// The first word of every entry; a new layout gets a new version.
const MAGIC: &str = "downsync-fn-v1";

/// Entries waiting for the writer thread; a compile waits only when this many are pending.
const PENDING: usize = 1024;

/// What the writer thread is asked to do.
#[derive(Debug)]
enum Job {
    /// Write an entry (folder, file name, bytes).
    Write(PathBuf, String, Vec<u8>),
    /// Answer once every earlier job is done.
    #[cfg_attr(not(test), allow(dead_code))]
    Flush(SyncSender<()>),
}

/// The store handed to wasmtime. One per engine.
#[derive(Debug)]
pub(crate) struct FunctionCache {
    dir: PathBuf,
    /// Whether the folder passed the ownership check, once; `None` until first used.
    usable: OnceLock<bool>,
    /// Writes go to a thread of their own: a cold compile inserts thousands of functions, and
    /// writing each in the compile's path doubled its time (measured: 250 to 500 ms).
    writer: OnceLock<SyncSender<Job>>,
    warned: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl FunctionCache {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            usable: OnceLock::new(),
            writer: OnceLock::new(),
            warned: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Functions found in the cache and functions compiled, since the engine started.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    fn usable(&self) -> bool {
        // The parent (the artifact cache's folder) too: whoever can write it can replace this one.
        *self.usable.get_or_init(|| {
            let checked =
                self.dir.parent().map_or(Ok(()), ensure_private_dir).and_then(|()| ensure_private_dir(&self.dir));
            self.report(checked)
        })
    }

    fn report(&self, checked: Result<(), String>) -> bool {
        match checked {
            Ok(()) => true,
            Err(why) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), reason = %why, "compiled-function cache not used; plugins are compiled whole");
                }
                false
            }
        }
    }

    fn writer(&self) -> &SyncSender<Job> {
        self.writer.get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(PENDING);
            let spawned = std::thread::Builder::new().name("downsync-fncache".into()).spawn(move || {
                let mut made: HashSet<PathBuf> = HashSet::new();
                for job in rx {
                    match job {
                        Job::Write(dir, name, bytes) => {
                            // A folder made before may be gone (the cache was deleted while
                            // running, which is allowed): make it again and retry once.
                            for _ in 0..2 {
                                if !made.contains(&dir) {
                                    if let Err(why) = ensure_private_dir(&dir) {
                                        tracing::debug!(dir = %dir.display(), reason = %why, "cannot cache a compiled function");
                                        break;
                                    }
                                    made.insert(dir.clone());
                                }
                                match write_private_atomically(&dir, &name, &dir.join(&name), &bytes) {
                                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                        made.remove(&dir);
                                    }
                                    Err(e) => {
                                        tracing::debug!(dir = %dir.display(), error = %e, "cannot cache a compiled function");
                                        break;
                                    }
                                    Ok(()) => break,
                                }
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            if let Err(e) = spawned {
                // The receiver is gone with the closure: every insert reports failure.
                tracing::warn!(error = %e, "cannot start the compiled-function cache writer; functions are not cached");
            }
            tx
        })
    }

    /// Waits until every insert so far is on disk.
    #[cfg(test)]
    fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.writer().send(Job::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Entries spread over 256 sub-folders, so no folder holds tens of thousands of files.
    fn path(&self, key: &[u8]) -> (PathBuf, String) {
        let name = hex(key);
        let shard = name.get(..2).unwrap_or("00").to_string();
        (self.dir.join(shard), name)
    }

    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !self.usable() {
            return None;
        }
        let (dir, name) = self.path(key);
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if let Err(why) = check_owner(&meta, "file") {
            tracing::warn!(path = %path.display(), reason = %why, "ignoring a cached function that is not trustworthy");
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        match verify(bytes) {
            Ok(value) => Some(value),
            Err(why) => {
                tracing::warn!(path = %path.display(), reason = why, "discarding a corrupt cached function");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.read(key);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        if !self.usable() {
            return false;
        }
        let (dir, name) = self.path(key);
        self.writer().send(Job::Write(dir, name, entry(&value))).is_ok()
    }
}

/// An entry: the header line, then the value.
fn entry(value: &[u8]) -> Vec<u8> {
    let header = format!("{MAGIC} {}\n", hex(&Sha256::digest(value)));
    let mut out = Vec::with_capacity(header.len() + value.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(value);
    out
}

/// The value of an entry whose header matches it.
fn verify(mut bytes: Vec<u8>) -> Result<Vec<u8>, &'static str> {
    let end = bytes.iter().take(128).position(|&b| b == b'\n').ok_or("no header")?;
    let header = std::str::from_utf8(&bytes[..end]).map_err(|_| "no header")?;
    let Some((magic, sha)) = header.split_once(' ') else { return Err("no header") };
    if magic != MAGIC {
        return Err("not an entry of this version");
    }
    if hex(&Sha256::digest(&bytes[end + 1..])) != sha {
        return Err("the entry does not hash to its header");
    }
    Ok(bytes.split_off(end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    /// A private folder of its own, and the cache's folder inside it (unmade).
    fn mk_dir(name: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("downsync-fncache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        ensure_private_dir(&base).expect("private scratch folder");
        let dir = base.join("functions");
        (base, dir)
    }

    #[test]
    fn an_inserted_function_comes_back_and_a_tampered_one_is_a_miss() {
        let (base, dir) = mk_dir("roundtrip");
        let cache = FunctionCache::new(&dir);
        let key = [0xab_u8; 32];
        assert!(cache.get(&key).is_none());
        assert!(cache.insert(&key, b"machine code".to_vec()));
        cache.flush();
        assert_eq!(cache.get(&key).as_deref(), Some(&b"machine code"[..]));
        assert_eq!(cache.counts(), (1, 1));

        let path = dir.join("ab").join(hex(&key));
        let mut bytes = std::fs::read(&path).expect("entry written");
        *bytes.last_mut().expect("bytes") ^= 1;
        std::fs::write(&path, bytes).expect("tamper");
        assert!(cache.get(&key).is_none(), "a corrupt entry is not used");
        assert!(!path.exists(), "and is removed, so the next compile replaces it");

        std::fs::remove_dir_all(&dir).expect("delete the cache while in use");
        assert!(cache.insert(&key, b"again".to_vec()));
        cache.flush();
        assert_eq!(cache.get(&key).as_deref(), Some(&b"again"[..]), "a deleted cache is made again");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_folder_others_can_write_is_neither_read_nor_written_nor_one_inside_it() {
        use std::os::unix::fs::PermissionsExt;
        let (base, dir) = mk_dir("open");
        let key = [0xcd_u8; 32];
        std::fs::create_dir_all(dir.join("cd")).expect("mkdir");
        std::fs::write(dir.join("cd").join(hex(&key)), entry(b"planted")).expect("plant");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let cache = FunctionCache::new(&dir);
        assert!(cache.get(&key).is_none(), "nothing is read from a world-writable folder");
        assert!(!cache.insert(&[0xce_u8; 32], b"code".to_vec()), "nor written to it");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let below = FunctionCache::new(&dir);
        assert!(below.get(&key).is_none(), "a private folder in an open one is not trusted either");
        let _ = std::fs::remove_dir_all(&base);
    }
}
