//! The one wasmtime engine: pooling allocator, fuel, epoch ticker, and the on-disk cache of
//! precompiled components.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{v0_1, v0_2};
use super::cache::ArtifactCache;
use super::component::RulePre;
use super::error::{Error, Result};
use super::function_cache::FunctionCache;
use super::host::{CallState, LogLimiter};

/// Limits and cache settings for the engine. Deserialised from the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    /// Instructions-ish a call may burn; the same object always gets the same verdict.
    pub fuel: u64,
    /// Wall-clock backstop per call, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory cap per call, in bytes.
    pub memory_bytes: usize,
    /// Concurrent instances the pooling allocator keeps slots for.
    pub pool_instances: u32,
    /// Core wasm instances one call may create. A Rust component needs a handful; a component
    /// with an interpreter built in (componentize-py) needs more than 16.
    pub max_instances_per_call: usize,
    /// Where precompiled components (and, under `functions/`, Cranelift's compiled functions,
    /// so a new version of a plugin compiles only what changed) are cached; None disables both.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            fuel: 200_000_000,
            deadline_ms: 1_000,
            memory_bytes: 64 << 20,
            pool_instances: 64,
            max_instances_per_call: 32,
            cache_dir: default_cache_dir(),
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("downsync").join("components"))
}

/// Bytes of each pooled memory and table kept resident between instances (when the kernel can
/// tell which pages were touched). A Rust guest's stack (1 MiB, growing down), data and first
/// heap pages lie within the first few MiB.
const KEEP_RESIDENT: usize = 4 << 20;

/// Epoch ticks per second; deadlines are counted in these.
const TICK: Duration = Duration::from_millis(10);

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The shared engine. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    config: EngineConfig,
    /// Plugin log lines per plugin name, across all calls.
    logs: LogLimiter,
    /// Precompiled components on disk, if configured.
    cache: Option<ArtifactCache>,
    /// Compiled functions on disk, if configured.
    functions: Option<Arc<FunctionCache>>,
    _ticker: Ticker,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = config.pool_instances.max(1);
        pool.total_component_instances(slots)
            .total_core_instances((slots * 4).max(u32::try_from(config.max_instances_per_call).unwrap_or(u32::MAX)))
            .max_core_instances_per_component(u32::try_from(config.max_instances_per_call).unwrap_or(u32::MAX))
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(config.memory_bytes);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            // A fresh instance per call is the hot path. By default each freed slot's memory is
            // given back with madvise (and a TLB shootdown) and the next instance faults every
            // page in again: measured, that was most of an instance's price. With PAGEMAP_SCAN
            // (Linux 6.7+) only the pages a call dirtied are reset, by memset, and stay resident.
            // Without it, keeping memory resident would memset the whole region: not worth it.
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT);
        }
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let functions = config.cache_dir.as_deref().map(|dir| Arc::new(FunctionCache::new(&dir.join("functions"))));
        if let Some(store) = &functions {
            wasm.enable_incremental_compilation(Arc::clone(store) as Arc<dyn wasmtime::CacheStore>)
                .map_err(Error::Engine)?;
        }
        let engine = Engine::new(&wasm).map_err(Error::Engine)?;

        let mut linker = Linker::new(&engine);
        super::wasi::add_to_linker(&mut linker).map_err(Error::Engine)?;
        // Both package versions: a component imports the host interface of the one it was
        // built against.
        v0_2::Rule::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(Error::Engine)?;
        v0_1::Rule::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(Error::Engine)?;

        let cache = config.cache_dir.as_deref().map(ArtifactCache::new);
        let stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop_flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("downsync-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(wasmtime::Error::msg(format!("cannot start the epoch ticker: {e}"))))?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                logs: LogLimiter::default(),
                cache,
                functions,
                _ticker: Ticker(stop),
            }),
        })
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The rate limit on plugin log lines, shared by every call.
    pub(crate) fn logs(&self) -> &LogLimiter {
        &self.inner.logs
    }

    /// Epoch ticks that make up the per-call deadline.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.inner.config.deadline_ms / TICK.as_millis() as u64).max(1)
    }

    /// Functions taken from the compiled-function cache and functions compiled, since start.
    pub fn function_counts(&self) -> (u64, u64) {
        self.inner.functions.as_ref().map_or((0, 0), |f| f.counts())
    }

    /// Compiles `bytes` (or takes them from the cache) and links them against the `rule` world
    /// of `downsync:rules@0.2.0`, or failing that of 0.1.0. Returns the component's sha256
    /// (lowercase hex) and the prepared instance; `label` names the plugin in errors.
    /// [`Plugin::load`](super::Plugin::load) is the public way in.
    pub(crate) fn prepare(&self, label: &str, bytes: &[u8]) -> Result<(String, RulePre)> {
        let digest = hex(&Sha256::digest(bytes));
        super::imports::check(label, bytes)?;
        let component = self.compile(label, &digest, bytes)?;
        let mismatch = |source| Error::WorldMismatch { plugin: label.to_string(), source };
        let pre = self.inner.linker.instantiate_pre(&component).map_err(mismatch)?;
        let pre = match v0_2::RulePre::new(pre.clone()) {
            Ok(p) => RulePre::V0_2(p),
            Err(v0_2_err) => match v0_1::RulePre::new(pre) {
                Ok(p) => RulePre::V0_1(p),
                // The 0.2.0 explanation: new plugins are built against it.
                Err(_) => return Err(mismatch(v0_2_err)),
            },
        };
        Ok((digest, pre))
    }

    fn compile(&self, label: &str, digest: &str, bytes: &[u8]) -> Result<Component> {
        let engine = &self.inner.engine;
        let compile_err = |source| Error::Compile { plugin: label.to_string(), source };
        let Some(cache) = &self.inner.cache else {
            return Component::new(engine, bytes).map_err(compile_err);
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = format!("{:016x}", h.finish());
        if let Some(artifact) = cache.get(label, digest, &compat) {
            // SAFETY: the artifact comes from a folder and file only this user can write (see
            // plugin::cache), and its header ties it to this component's sha256 and to this
            // engine's compatibility hash, with a sha256 of the artifact itself. wasmtime also
            // checks its own header.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = label, error = %e, "discarding an unusable cached artifact; recompiling")
                }
            }
        }
        let before = self.function_counts();
        let started = std::time::Instant::now();
        let artifact = engine.precompile_component(bytes).map_err(compile_err)?;
        let (hits, misses) = self.function_counts();
        tracing::info!(
            plugin = label,
            ms = started.elapsed().as_millis() as u64,
            functions_reused = hits.saturating_sub(before.0),
            functions_compiled = misses.saturating_sub(before.1),
            "compiled"
        );
        cache.put(label, digest, &compat, &artifact);
        // SAFETY: `artifact` was produced just above by this very engine.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize(engine, &artifact) }.map_err(compile_err)
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
