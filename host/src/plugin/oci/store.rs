//! The disk cache of pulled plugin versions, by digest, with the trust rules of the compiled
//! cache (a 0700 folder and files of this user only, nothing group- or world-writable): the
//! component as `blobs/<hex>.wasm`, re-hashed whenever it is read, and per plugin a record of
//! the last verified version, so that a start with the registry down runs it.

use std::path::{Path, PathBuf};

use super::pull::Pulled;
use super::signature::{TrustedKey, VerifyPolicy};
use super::source::Source;
use crate::plugin::cache::{check_owner, ensure_private_dir, write_private_atomically};
use crate::plugin::digest::sha256_hex;

/// The last verified version of one plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The source as configured then.
    pub source: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// The component digest.
    pub layer_digest: String,
    /// The key that signed it, if it was verified.
    pub signer: Option<String>,
    /// When it was verified.
    pub verified_at_unix_seconds: u64,
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, layer_digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{}.wasm", layer_digest.trim_start_matches("sha256:")))
    }

    /// One record per plugin and source: two syncers sharing the cache (or a source changed
    /// in the config) never take each other's record.
    fn record_path(&self, name: &str, source: &Source) -> PathBuf {
        let id = &sha256_hex(source.to_string().as_bytes())[..16];
        self.dir.join("records").join(format!("{name}-{id}.json"))
    }

    /// Stores a verified version of plugin `name` and returns the component's path.
    pub fn put(&self, name: &str, source: &Source, pulled: &Pulled) -> Result<PathBuf, String> {
        let (blobs, records) = (self.dir.join("blobs"), self.dir.join("records"));
        for d in [&self.dir, &blobs, &records] {
            ensure_private_dir(d).map_err(|why| format!("the plugin cache {} cannot be used: {why}", d.display()))?;
        }
        let blob = self.blob_path(&pulled.layer_digest);
        if self.read_blob(&pulled.layer_digest).is_err() {
            let hex = pulled.layer_digest.trim_start_matches("sha256:");
            write_private_atomically(&blobs, hex, &blob, &pulled.bytes)
                .map_err(|e| format!("cannot write {}: {e}", blob.display()))?;
        }
        let record = Record {
            source: source.to_string(),
            manifest_digest: pulled.manifest_digest.clone(),
            layer_digest: pulled.layer_digest.clone(),
            signer: pulled.signer.clone(),
            verified_at_unix_seconds: now_unix(),
        };
        let text = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        write_private_atomically(&records, name, &self.record_path(name, source), &text)
            .map_err(|e| format!("cannot write the record of {name}: {e}"))?;
        Ok(blob)
    }

    /// The last verified version of `name` from `source`, when the cache holds one that the
    /// current keys and policy still accept: its record, and the component's path (its bytes
    /// re-hashed to the recorded digest).
    pub fn last_verified(
        &self,
        name: &str,
        source: &Source,
        keys: &[TrustedKey],
        policy: VerifyPolicy,
    ) -> Result<(Record, PathBuf), String> {
        let path = self.record_path(name, source);
        let record: Record = serde_json::from_slice(&self.read_trusted(&path)?)
            .map_err(|e| format!("its cache record {} is unreadable: {e}", path.display()))?;
        if record.source != source.to_string() {
            return Err(format!("the cache holds a version of {}, not of {source}", record.source));
        }
        if policy == VerifyPolicy::Required
            && !record.signer.as_ref().is_some_and(|s| keys.iter().any(|k| &k.name == s))
        {
            return Err(format!(
                "the cached version {} was not verified with any of the keys configured now",
                record.manifest_digest
            ));
        }
        self.read_blob(&record.layer_digest)?;
        Ok((record.clone(), self.blob_path(&record.layer_digest)))
    }

    fn read_blob(&self, layer_digest: &str) -> Result<Vec<u8>, String> {
        let bytes = self.read_trusted(&self.blob_path(layer_digest))?;
        if format!("sha256:{}", sha256_hex(&bytes)) != layer_digest {
            return Err(format!("the cached component of {layer_digest} does not hash to it (corrupt or replaced)"));
        }
        Ok(bytes)
    }

    /// A file of the cache, when the folder and the file pass the trust rules.
    fn read_trusted(&self, path: &Path) -> Result<Vec<u8>, String> {
        let dir = path.parent().unwrap_or(&self.dir);
        for d in [&self.dir, dir] {
            let meta = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
            check_owner(&meta, "folder").map_err(|why| format!("{} is not trusted: {why}", d.display()))?;
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        check_owner(&meta, "file").map_err(|why| format!("{} is not trusted: {why}", path.display()))?;
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mk_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("downsync-oci-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store::new(&dir)
    }

    fn mk_pulled(bytes: &[u8], signer: Option<&str>) -> Pulled {
        Pulled {
            manifest_digest: "sha256:feed".into(),
            layer_digest: format!("sha256:{}", sha256_hex(bytes)),
            bytes: bytes.to_vec(),
            signer: signer.map(str::to_string),
        }
    }

    fn mk_key() -> TrustedKey {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let signing = p256::ecdsa::SigningKey::from_slice(&[7; 32]).expect("key");
        let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem");
        TrustedKey::from_pem("k.pub", &pem).expect("key")
    }

    #[test]
    fn a_verified_version_is_kept_and_found_again_under_the_same_source_and_keys() {
        let store = mk_store("roundtrip");
        let source = Source::parse("oci://127.0.0.1:5000/rules/stamp:v1").expect("source");
        let path = store.put("stamp", &source, &mk_pulled(b"component", Some("k.pub"))).expect("put");
        assert_eq!(std::fs::read(&path).expect("blob"), b"component");
        let (record, again) =
            store.last_verified("stamp", &source, &[mk_key()], VerifyPolicy::Required).expect("found");
        assert_eq!((record.signer.as_deref(), again), (Some("k.pub"), path.clone()));
        let other = Source::parse("oci://127.0.0.1:5000/rules/stamp:v2").expect("source");
        assert!(store.last_verified("stamp", &other, &[mk_key()], VerifyPolicy::Required).is_err(), "another tag");
        assert!(store.last_verified("stamp", &source, &[], VerifyPolicy::Required).is_err(), "key no longer trusted");
        assert!(store.last_verified("stamp", &source, &[], VerifyPolicy::Off).is_ok());
        let _ = std::fs::remove_dir_all(store.dir());
    }

    #[test]
    fn a_replaced_or_world_writable_entry_is_not_used() {
        let store = mk_store("tamper");
        let source = Source::parse("oci://127.0.0.1:5000/rules/stamp:v1").expect("source");
        let path = store.put("stamp", &source, &mk_pulled(b"component", None)).expect("put");
        std::fs::write(&path, b"evil").expect("overwrite");
        let err = store.last_verified("stamp", &source, &[], VerifyPolicy::Off).expect_err("replaced");
        assert!(err.contains("does not hash"), "{err}");
        store.put("stamp", &source, &mk_pulled(b"component", None)).expect("put again");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = store.last_verified("stamp", &source, &[], VerifyPolicy::Off).expect_err("writable");
        assert!(err.contains("not trusted"), "{err}");
        let _ = std::fs::remove_dir_all(store.dir());
    }
}
