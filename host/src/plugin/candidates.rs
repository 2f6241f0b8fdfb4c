//! Where the reloader's candidates come from and how one is checked before it may replace a
//! version: the `<name>.wasm` files of the plugins folder and the versions pulled from
//! registries (a name from both is held back), read within the folder's bounds, compiled, and
//! run against the fixtures beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use super::component::Plugin;
use super::error::{Error, Result};
use super::files::Folder;
use super::fixtures;
use super::reload::Reloader;

impl Reloader {
    /// The `<stem>.wasm` entries of the folder (symlinks followed, hidden ones skipped) and the
    /// plugins pulled from registries; with the ones held back, and why: a name both in the
    /// folder and pulled, or a registry plugin with no version yet.
    pub(super) fn list(&self) -> Result<(BTreeMap<String, PathBuf>, BTreeMap<String, String>)> {
        let watch_err = |e: std::io::Error| Error::Watch { path: self.dir.clone(), message: e.to_string() };
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(watch_err)? {
            let path = entry.map_err(watch_err)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(stem) = name.strip_suffix(".wasm") else { continue };
            if name.starts_with('.') || stem.is_empty() || !path.is_file() {
                continue;
            }
            out.insert(stem.to_string(), path.clone());
        }
        let mut held = BTreeMap::new();
        let pulled = self.pulled.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (name, entry) in pulled {
            if let Some(file) = out.get(&name) {
                held.insert(
                    name.clone(),
                    format!(
                        "plugin {name} comes both from the plugins folder ({}) and from plugins.{name}.source ({}); remove one",
                        file.display(),
                        entry.state.source
                    ),
                );
                continue;
            }
            let why =
                entry.state.last_error.clone().unwrap_or_else(|| format!("{} is not pulled yet", entry.state.source));
            if entry.file.is_none() {
                held.insert(name.clone(), why);
            }
            out.insert(name, entry.file.unwrap_or_else(|| self.dir.clone()));
        }
        Ok((out, held))
    }

    /// The bytes of `file`: a plugin pulled from a registry (from the verified cache), or an
    /// entry of the folder, refused when its links lead out of the folder; either refused
    /// when larger than the plugin file limit (64 MiB), before it is read.
    pub(super) fn read(&self, stem: &str, file: &Path) -> Result<Vec<u8>> {
        let pulled = self.pulled.lock().unwrap_or_else(PoisonError::into_inner).get(stem).and_then(|e| e.file.clone());
        if pulled.as_deref() != Some(file) {
            Folder::new(&self.dir)?.resolve(file)?;
        }
        Plugin::read_file(&self.engine, file)
    }

    /// Compiles and checks a new version without touching the registry.
    pub(super) fn check(&self, stem: &str, bytes: &[u8]) -> Result<Plugin> {
        let plugin = Plugin::load_unaccepted(&self.engine, stem, bytes)?;
        let refuse = |message: String| Error::Check {
            plugin: plugin.name().to_string(),
            file: format!("{stem}.wasm"),
            digest: plugin.digest().to_string(),
            message,
        };
        let from_registry = self.pulled.lock().unwrap_or_else(PoisonError::into_inner).contains_key(stem);
        if from_registry && plugin.name() != stem {
            return Err(refuse(format!(
                "it calls itself {}, but plugins.{stem}.source pulls it: its settings would not apply; name the \
                 source's key {} or rebuild it with the name {stem}",
                plugin.name(),
                plugin.name()
            )));
        }
        // Fixtures beside the file; for a plugin from a registry, in the plugins folder.
        let dir = self.dir.join(format!("{stem}.fixtures"));
        if dir.is_dir() {
            let cases = fixtures::load_dir_within(&dir, &Folder::new(&self.dir)?)?;
            let failures: Vec<String> = fixtures::run_all(&plugin, &cases)
                .into_iter()
                .filter_map(|o| o.failure.map(|f| format!("fixture {}: {f}", o.name)))
                .collect();
            if !failures.is_empty() {
                return Err(refuse(failures.join("; ")));
            }
        }
        Ok(plugin)
    }
}
