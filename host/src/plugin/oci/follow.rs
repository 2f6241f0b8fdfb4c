//! Following registry sources: each plugin with `source: oci://…` is pulled and verified at
//! start (from the disk cache when the registry is out of reach), then its tag is checked every
//! `registry.checkSeconds` on a thread of its own. A new digest is stored and handed to the
//! reloader, which takes it exactly as a file dropped into the plugins folder: fixtures,
//! contract checks, shadow, promotion and automatic rollback. A failed check keeps the running
//! version and is reported once per distinct error (a log line, an Event) and counted every
//! time (`downsync_plugin_pull_failures_total`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::access::RegistrySettings;
use super::error::{PullError, PullFailure};
use super::pull::{Pull, Pulled};
use super::signature::{TrustedKey, VerifyPolicy};
use super::source::Source;
use super::state::{PulledEntry, SourceState};
use super::store::Store;
use crate::plugin::error::{Error, Result};
use crate::plugin::reload::Reloader;
use crate::plugin::settings::RegistryConfig;

/// How long the first pull of a source may take at start before the cache is used.
const FIRST_PULL: Duration = Duration::from_secs(30);

/// One plugin that comes from a registry.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The plugin (its key under `plugins`).
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// The keys trusted to sign it.
    pub keys: Vec<TrustedKey>,
    /// What is asked of signatures.
    pub policy: VerifyPolicy,
}

/// Every registry source of the config, with how registries are reached and where pulled
/// versions are kept.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The plugins.
    pub list: Vec<Followed>,
    /// Credentials, CA, insecure registries, the check interval.
    pub settings: RegistrySettings,
    /// The disk cache.
    pub store: Store,
    /// The plugin file limit.
    pub limit: u64,
}

impl Sources {
    /// The sources of `config`, their keys read: an error names the setting at fault.
    pub fn from_config(
        config: &RegistryConfig,
        settings: &RegistrySettings,
        store_dir: &Path,
        limit: u64,
    ) -> Result<Self> {
        let mut list = Vec::new();
        for (name, p) in &config.plugins {
            let Some(text) = &p.source else { continue };
            let bad =
                |field: &str, message: String| Error::Source { setting: format!("plugins.{name}.{field}"), message };
            if name == "*" {
                return Err(bad("source", "a registry source names one plugin; \"*\" cannot have one".into()));
            }
            let source = Source::parse(text).map_err(|e| bad("source", e))?;
            let mut keys = Vec::new();
            for (i, path) in p.keys.iter().enumerate() {
                keys.push(
                    TrustedKey::load(path)
                        .map_err(|e| bad(&format!("keys[{i}]"), format!("{}: {e}", path.display())))?,
                );
            }
            if keys.is_empty() && p.verify != VerifyPolicy::Off {
                return Err(bad(
                    "keys",
                    format!(
                        "{text} is verified by default and no key is given: add the cosign public key files here, or \
                         write plugins.{name}.verify: off to run it unsigned"
                    ),
                ));
            }
            list.push(Followed { name: name.clone(), source, keys, policy: p.verify });
        }
        Ok(Self { list, settings: settings.clone(), store: Store::new(store_dir), limit })
    }
}

/// Stops the following thread when dropped.
pub struct FollowHandle {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FollowHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Reloader {
    /// Pulls every source once now (the cache stands in for a registry out of reach), then
    /// checks them on a background thread until the handle is dropped. Call before
    /// [`Reloader::watch`], whose first scan loads what was pulled. Blocks: call it off the
    /// async workers.
    pub fn follow(self: &Arc<Self>, sources: Sources) -> Result<FollowHandle> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Start(format!("cannot start the registry client: {e}")))?;
        for f in &sources.list {
            self.set_pulled(
                &f.name,
                PulledEntry {
                    file: None,
                    state: SourceState { source: f.source.to_string(), ..SourceState::default() },
                },
            );
            self.refresh(&runtime, &sources, f, Some(FIRST_PULL));
            if self.pulled_file(&f.name).is_none() {
                self.use_cached(&sources, f);
            }
        }
        let (stop, rx) = channel();
        let me = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("downsync-plugin-pull".into())
            .spawn(move || me.follow_loop(&runtime, &sources, &rx))
            .map_err(|e| Error::Start(format!("cannot start the registry thread: {e}")))?;
        Ok(FollowHandle { stop: Some(stop), thread: Some(thread) })
    }

    fn follow_loop(&self, runtime: &tokio::runtime::Runtime, sources: &Sources, stop: &Receiver<()>) {
        loop {
            match stop.recv_timeout(sources.settings.interval()) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let mut changed = false;
            for f in &sources.list {
                changed |= self.refresh(runtime, sources, f, None);
            }
            if changed && let Err(e) = self.scan() {
                tracing::error!(error = %e, "cannot scan the plugins after a pull");
            }
        }
    }

    /// Checks one source and pulls a new version if its tag moved; returns whether the version
    /// on disk changed.
    fn refresh(
        &self,
        runtime: &tokio::runtime::Runtime,
        sources: &Sources,
        f: &Followed,
        limit: Option<Duration>,
    ) -> bool {
        let now = now_unix();
        let current = self.pulled_state(&f.name).and_then(|s| s.digest).filter(|_| self.pulled_file(&f.name).is_some());
        if f.source.pinned().is_some() && current.is_some() {
            return false;
        }
        let attempt = async {
            let client = sources.settings.client().map_err(|e| e.at(&f.source))?;
            let auth = sources.settings.auth(f.source.registry()).map_err(|e| e.at(&f.source))?;
            let pull = Pull { client: &client, auth: &auth, keys: &f.keys, policy: f.policy, limit: sources.limit };
            if current.is_some() && current == Some(pull.current_digest(&f.source).await?) {
                return Ok(None);
            }
            pull.pull(&f.source).await.map(Some)
        };
        let outcome = match limit {
            Some(d) => runtime.block_on(async {
                tokio::time::timeout(d, attempt).await.unwrap_or_else(|_| {
                    Err(PullError::new(
                        PullFailure::Unreachable,
                        format!("{}: no answer within {}s", f.source, d.as_secs()),
                    ))
                })
            }),
            None => runtime.block_on(attempt),
        };
        let stored = outcome.and_then(|p| match p {
            None => Ok(None),
            Some(pulled) => sources
                .store
                .put(&f.name, &f.source, &pulled)
                .map(|path| Some((pulled, path)))
                .map_err(|e| PullError::new(PullFailure::Setup, e)),
        });
        match stored {
            Ok(None) => {
                self.update_state(&f.name, |s| {
                    s.last_check_unix_seconds = Some(now);
                    s.last_success_unix_seconds = Some(now);
                    s.last_error = None;
                    // The registry answers again and still names the cached version.
                    s.from_cache = false;
                });
                false
            }
            Ok(Some((pulled, path))) => {
                self.took(f, &pulled, path, now);
                true
            }
            Err(e) => {
                self.pull_failed(f, &e, now);
                false
            }
        }
    }

    fn took(&self, f: &Followed, pulled: &Pulled, path: PathBuf, now: u64) {
        let signer = pulled.signer.as_deref().unwrap_or("none (verify: optional or off)");
        tracing::info!(
            plugin = %f.name, source = %f.source, digest = %pulled.manifest_digest, component = %pulled.layer_digest,
            signer, "pulled a new plugin version; checking it"
        );
        if pulled.signer.is_none() && f.policy == VerifyPolicy::Optional {
            tracing::warn!(plugin = %f.name, source = %f.source, digest = %pulled.manifest_digest, "the version is unsigned; taken because verify is optional");
        }
        self.notify(
            &f.name,
            false,
            "PluginPulled",
            &format!("plugin {}: pulled {} from {} (signed by {signer})", f.name, pulled.manifest_digest, f.source),
        );
        self.set_pulled(
            &f.name,
            PulledEntry {
                file: Some(path),
                state: SourceState {
                    source: f.source.to_string(),
                    digest: Some(pulled.manifest_digest.clone()),
                    signer: pulled.signer.clone(),
                    last_check_unix_seconds: Some(now),
                    last_success_unix_seconds: Some(now),
                    last_error: None,
                    from_cache: false,
                },
            },
        );
    }

    fn pull_failed(&self, f: &Followed, e: &PullError, now: u64) {
        self.registry().metrics().record_pull_failure(&f.name, e.failure.as_str());
        let again = self.pulled_state(&f.name).and_then(|s| s.last_error).as_deref() == Some(e.message.as_str());
        let kept = self.pulled_state(&f.name).and_then(|s| s.digest);
        if again {
            tracing::debug!(plugin = %f.name, source = %f.source, reason = e.failure.as_str(), error = %e, "plugin source still failing");
        } else {
            let keeping =
                kept.as_deref().map_or_else(|| "no version of it is running".to_string(), |d| format!("keeping {d}"));
            tracing::error!(plugin = %f.name, source = %f.source, reason = e.failure.as_str(), error = %e, "{keeping}");
            self.notify(&f.name, true, "PluginPullFailed", &format!("plugin {}: {e}; {keeping}", f.name));
        }
        self.update_state(&f.name, |s| {
            s.last_check_unix_seconds = Some(now);
            s.last_error = Some(e.message.clone());
        });
    }

    /// At start, with no version pulled: the last verified one from the cache, if the keys and
    /// policy still accept it.
    fn use_cached(&self, sources: &Sources, f: &Followed) {
        match sources.store.last_verified(&f.name, &f.source, &f.keys, f.policy) {
            Ok((record, path)) => {
                tracing::warn!(
                    plugin = %f.name, source = %f.source, digest = %record.manifest_digest,
                    verified_at = record.verified_at_unix_seconds, "the registry is out of reach; running the last verified version from the cache"
                );
                self.notify(
                    &f.name,
                    true,
                    "PluginFromCache",
                    &format!(
                        "plugin {}: {} is out of reach; running the last verified version {} from the cache",
                        f.name, f.source, record.manifest_digest
                    ),
                );
                let mut entry = self.pulled_entry(&f.name).unwrap_or_default();
                entry.file = Some(path);
                entry.state.digest = Some(record.manifest_digest);
                entry.state.signer = record.signer;
                entry.state.from_cache = true;
                self.set_pulled(&f.name, entry);
            }
            Err(why) => tracing::warn!(plugin = %f.name, source = %f.source, reason = %why, "no usable cached version"),
        }
    }

    fn update_state(&self, name: &str, change: impl FnOnce(&mut SourceState)) {
        let mut pulled = self.pulled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = pulled.get_mut(name) {
            change(&mut entry.state);
        }
    }

    fn set_pulled(&self, name: &str, entry: PulledEntry) {
        self.pulled.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), entry);
    }

    fn pulled_entry(&self, name: &str) -> Option<PulledEntry> {
        self.pulled.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    fn pulled_state(&self, name: &str) -> Option<SourceState> {
        self.pulled_entry(name).map(|e| e.state)
    }

    fn pulled_file(&self, name: &str) -> Option<PathBuf> {
        self.pulled_entry(name).and_then(|e| e.file)
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
