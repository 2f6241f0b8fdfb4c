//! Reads plugin and fixture files: bounded in size before a byte is read, and, in the plugins
//! folder, never through a link that leads out of it.
//!
//! A Kubernetes ConfigMap volume is links inside the folder (`x.wasm -> ..data/x.wasm`,
//! `..data -> ..2026_01_01_00_00_00.1`); they resolve inside it and are read as any file. A
//! link out of the folder (`x.wasm -> ../elsewhere.wasm`, `x.fixtures -> /etc`) is refused:
//! whoever can write the folder (a ConfigMap's editors) would otherwise choose what downsync
//! reads of the pod's own files.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// The largest plugin component read: 64 MiB. The largest
/// component known to work, an interpreter built in (componentize-py), is 19 MB.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// What sets the component limit, for the message.
const COMPONENT_LIMIT: &str = "the limit of a plugin file";

/// The largest fixture file: 4 MiB. A fixture holds one object, and the API server stores no
/// object over 1.5 MiB.
pub const MAX_FIXTURE_FILE_BYTES: u64 = 4 << 20;

/// Reads `path` whole when it holds at most `limit` bytes, checked on the opened file before
/// reading (and a file that grows meanwhile is read no further than the limit). `setting` names
/// what sets the limit, for the message.
pub(crate) fn read_bounded(path: &Path, limit: u64, setting: &'static str) -> Result<Vec<u8>> {
    let read_err = |source| Error::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = |size: u64| Error::FileTooLarge { path: path.to_path_buf(), size, limit, setting };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a component file of at most `limit` bytes, checked before reading.
pub fn read_component(path: &Path, limit: u64) -> Result<Vec<u8>> {
    read_bounded(path, limit, COMPONENT_LIMIT)
}

/// [`read_bounded`] as text.
pub(crate) fn read_text_bounded(path: &Path, limit: u64, setting: &'static str) -> Result<String> {
    let bytes = read_bounded(path, limit, setting)?;
    String::from_utf8(bytes).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// The plugins folder, resolved once, against which the entries read from it are checked.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    /// The folder as configured.
    dir: PathBuf,
    /// The folder with every link resolved.
    real: PathBuf,
}

impl Folder {
    /// Resolves `dir`; it must exist.
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let real = dir.canonicalize().map_err(|source| Error::Read { path: dir.to_path_buf(), source })?;
        Ok(Self { dir: dir.to_path_buf(), real })
    }

    /// `path` (an entry of the folder, or below one) with its links resolved, when that lies
    /// inside the folder; an error naming where it leads otherwise.
    pub(crate) fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let real = path.canonicalize().map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        if real.starts_with(&self.real) {
            Ok(real)
        } else {
            Err(Error::OutsideFolder { path: path.to_path_buf(), target: real, folder: self.dir.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mk_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("downsync-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = mk_dir("size");
        let path = dir.join("big.wasm");
        let file = std::fs::File::create(&path).expect("create");
        // Sparse: 1 GiB on paper, nothing on disk, and nothing read.
        file.set_len(1 << 30).expect("set_len");
        let started = std::time::Instant::now();
        let err = read_bounded(&path, DEFAULT_MAX_COMPONENT_BYTES, COMPONENT_LIMIT).expect_err("too large");
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused without reading");
        let msg = err.to_string();
        assert!(msg.contains("1.0 GiB") && msg.contains("64.0 MiB") && msg.contains(COMPONENT_LIMIT), "{msg}");
        std::fs::write(&path, b"small").expect("write");
        assert_eq!(read_bounded(&path, 5, "x").expect("at the limit"), b"small");
        assert!(read_bounded(&path, 4, "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn links_inside_the_folder_are_followed_and_links_out_of_it_refused() {
        let root = mk_dir("links");
        let (dir, elsewhere) = (root.join("plugins"), root.join("elsewhere"));
        std::fs::create_dir_all(dir.join("..2026_01_01_00_00_00.1")).expect("dir");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        // A ConfigMap volume: x.wasm -> ..data/x.wasm, ..data -> the timestamped folder.
        std::fs::write(dir.join("..2026_01_01_00_00_00.1/x.wasm"), b"x").expect("write");
        symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("link");
        symlink("..data/x.wasm", dir.join("x.wasm")).expect("link");
        std::fs::write(elsewhere.join("y.wasm"), b"y").expect("write");
        symlink("../elsewhere/y.wasm", dir.join("y.wasm")).expect("link");
        symlink("/etc", dir.join("y.fixtures")).expect("link");
        std::fs::write(dir.join("z.wasm"), b"z").expect("write");

        let folder = Folder::new(&dir).expect("folder");
        assert!(folder.resolve(&dir.join("x.wasm")).is_ok(), "the ConfigMap layout");
        assert!(folder.resolve(&dir.join("z.wasm")).is_ok(), "a plain file");
        let err = folder.resolve(&dir.join("y.wasm")).expect_err("out of the folder").to_string();
        assert!(err.contains("y.wasm") && err.contains("elsewhere") && err.contains("outside"), "{err}");
        assert!(folder.resolve(&dir.join("y.fixtures")).is_err(), "a fixtures link to /etc");
        // The folder itself reached through a link is fine.
        symlink(&dir, root.join("via-link")).expect("link");
        let via = Folder::new(&root.join("via-link")).expect("folder");
        assert!(via.resolve(&root.join("via-link").join("x.wasm")).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }
}
