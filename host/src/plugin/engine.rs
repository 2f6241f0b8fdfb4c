//! The wasmtime engines (Cranelift's, pooled, and Winch's for code in use at once: see
//! `tiering`): fuel, epoch ticker, and the on-disk cache of precompiled components.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::bindings::{v0_1, v0_2};
use super::cache::ArtifactCache;
use super::digest::sha256_hex;
use super::dispatch::RulePre;
use super::error::{Error, Result};
use super::host::{CallState, LogLimiter};
use super::tiering::{Background, Code, Compiled, Tier};

/// Limits and cache settings for the engine. Deserialised from the config file, where a user
/// sets the per-call fuel; the rest follow from it, from `workers` or from the environment, or
/// are fixed, and are set by tests and the bench.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    /// Instructions-ish a call may burn; the same object always gets the same verdict from the
    /// same code (Winch's and Cranelift's count within a percent of each other: see `tiering`).
    pub fuel: u64,
    /// Wall-clock backstop per call, in milliseconds. Not a setting: 1 s. Fuel is the limit
    /// that gives the same verdict every time; the deadline only bounds the wall-clock time fuel
    /// does not count (memory growth, host calls, a loaded machine), so a user has no reason to
    /// move it. Tests shorten it.
    #[serde(skip)]
    pub deadline_ms: u64,
    /// Linear memory cap per call, in bytes. Not a setting: half the memory downsync may use
    /// (its container's limit, else the machine's) shared by the workers, between 64 MiB and
    /// 1 GiB ([`super::memory_per_call`]), so the pod's memory limit is the one number to raise
    /// for a rule that needs more. Tests lower it.
    #[serde(skip)]
    pub memory_bytes: usize,
    /// Concurrent instances the pooling allocator keeps slots for.
    #[serde(skip)]
    pub pool_instances: u32,
    /// Core wasm instances one call may create. A Rust component needs a handful; a component
    /// with an interpreter built in (componentize-py) needs more than 16.
    #[serde(skip)]
    pub max_instances_per_call: usize,
    /// Where precompiled components are cached (`$XDG_CACHE_HOME/downsync/components`, else
    /// `~/.cache/downsync/components`); None disables the cache.
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
    /// Puts a component that is not in the artifact cache in use with Winch's code, compiled
    /// in a fraction of Cranelift's time, and replaces it with Cranelift's when a background
    /// thread has compiled that (a rule change then waits for the quick compile only). Off:
    /// Cranelift compiles before the version is used.
    #[serde(skip)]
    pub tiered_compilation: bool,
    /// The largest plugin file (`.wasm`) read, in bytes; a larger one is refused before it is
    /// read. Default 64 MiB (a component with a Python interpreter built in is 19 MB).
    #[serde(skip)]
    pub max_component_bytes: u64,
    /// Sends a 0.2.0 plugin only the fields its `reads` names (the `InputProjection` feature
    /// gate). Off: whole objects, and the plugin's output replaces them whole.
    #[serde(skip)]
    pub project_inputs: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            fuel: 200_000_000,
            deadline_ms: 1_000,
            memory_bytes: super::memory::MIN_MEMORY_PER_CALL,
            pool_instances: 64,
            max_instances_per_call: 32,
            cache_dir: default_cache_dir(),
            tiered_compilation: true,
            max_component_bytes: super::files::DEFAULT_MAX_COMPONENT_BYTES,
            project_inputs: true,
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
    /// Winch's engine, when tiered compilation is on and Winch runs on this machine.
    baseline: Option<Baseline>,
    /// Compiles optimized code for versions running baseline code.
    background: Background,
    config: EngineConfig,
    /// Plugin log lines per plugin name, across all calls.
    logs: LogLimiter,
    /// Precompiled components on disk, if configured.
    cache: Option<ArtifactCache>,
    /// Components Cranelift compiled, since start.
    optimized_compiles: std::sync::atomic::AtomicU64,
    _ticker: Ticker,
}

/// The engine and linker of baseline (Winch) code.
struct Baseline {
    engine: Engine,
    linker: Linker<CallState>,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let mut pool = pool_limits(&config);
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
        let baseline = if config.tiered_compilation { baseline_engine(&config) } else { None };
        // With baseline code in use meanwhile, Cranelift compiles on the background thread
        // alone, at low priority, instead of on every core at once. (A component Winch cannot
        // compile is then compiled on one core before use: slower, and rare.)
        wasm.parallel_compilation(baseline.is_none());
        let engine = Engine::new(&wasm).map_err(Error::Engine)?;
        let linker = rule_linker(&engine)?;

        let cache = config.cache_dir.as_deref().map(ArtifactCache::new);
        let stop = Arc::new(AtomicBool::new(false));
        let ticking: Vec<Engine> =
            std::iter::once(engine.clone()).chain(baseline.as_ref().map(|b| b.engine.clone())).collect();
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("downsync-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.iter().for_each(Engine::increment_epoch);
                }
            })
            .map_err(|e| Error::Engine(wasmtime::Error::msg(format!("cannot start the epoch ticker: {e}"))))?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                baseline,
                background: Background::default(),
                config,
                logs: LogLimiter::default(),
                cache,
                optimized_compiles: std::sync::atomic::AtomicU64::new(0),
                _ticker: Ticker(stop),
            }),
        })
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The rate limit on plugin log lines, shared by every call.
    pub(crate) fn logs(&self) -> &LogLimiter {
        &self.inner.logs
    }

    /// Epoch ticks that make up the per-call deadline.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.inner.config.deadline_ms / TICK.as_millis() as u64).max(1)
    }

    /// Components Cranelift compiled since the engine started (a cached artifact is not one).
    pub fn optimized_compiles(&self) -> u64 {
        self.inner.optimized_compiles.load(Ordering::Relaxed)
    }

    /// Whether a component not in the artifact cache starts on Winch's code (see `tiering`).
    pub fn tiered(&self) -> bool {
        self.inner.baseline.is_some()
    }

    /// Compiles `bytes` (or takes them from the cache) and links them against the `rule` world
    /// of `downsync:rules@0.2.0`, or failing that of 0.1.0. Returns the component's sha256
    /// (lowercase hex) and its code: Cranelift's when cached or when tiering is off, otherwise
    /// Winch's, replaced by Cranelift's once compiled in the background. `label` names the
    /// plugin in errors. [`Plugin::load`](super::Plugin::load) is the public way in.
    pub(crate) fn prepare(&self, label: &str, bytes: &[u8]) -> Result<(String, Arc<Code>)> {
        let digest = sha256_hex(bytes);
        super::imports::check(label, bytes)?;
        let inner = &self.inner;
        if let Some(component) = self.cached(label, &digest) {
            let pre = link(label, &inner.linker, &component)?;
            return Ok((digest, Code::new(Compiled { engine: inner.engine.clone(), pre, tier: Tier::Optimized })));
        }
        if let Some(baseline) = &inner.baseline {
            let started = std::time::Instant::now();
            match Component::new(&baseline.engine, bytes) {
                Ok(component) => {
                    let pre = link(label, &baseline.linker, &component)?;
                    tracing::info!(
                        plugin = label,
                        ms = started.elapsed().as_millis() as u64,
                        "compiled (baseline code, Winch); Cranelift's follows once the version is accepted"
                    );
                    let code = Code::new(Compiled { engine: baseline.engine.clone(), pre, tier: Tier::Baseline });
                    self.optimize_later(label, &digest, bytes, &code);
                    return Ok((digest, code));
                }
                // Winch lacks a few proposals (tail calls, exceptions, GC): Cranelift has them.
                Err(e) => {
                    tracing::info!(plugin = label, error = %e, "Winch cannot compile this component; Cranelift compiles it now")
                }
            }
        }
        let component = self.compile(label, &digest, bytes)?;
        let pre = link(label, &inner.linker, &component)?;
        Ok((digest, Code::new(Compiled { engine: inner.engine.clone(), pre, tier: Tier::Optimized })))
    }

    /// Starts the background compile [`PluginEngine::prepare`] left in `code`, if any: called
    /// once the version is accepted, so a refused one is never compiled by Cranelift.
    pub(crate) fn optimize(&self, code: &Code) {
        if let Some(job) = code.take_pending() {
            self.inner.background.submit(job);
        }
    }

    /// Leaves in `code` a job for the background thread: compile `bytes` with Cranelift and put
    /// the result in `code`, unless every holder of `code` is gone by then (a version replaced).
    /// [`PluginEngine::optimize`] starts it.
    fn optimize_later(&self, label: &str, digest: &str, bytes: &[u8], held: &Arc<Code>) {
        let (engine, code): (Weak<Inner>, Weak<Code>) = (Arc::downgrade(&self.inner), Arc::downgrade(held));
        let (label, digest, bytes) = (label.to_string(), digest.to_string(), bytes.to_vec());
        held.defer(Box::new(move || {
            let (Some(inner), true) = (engine.upgrade(), code.strong_count() > 0) else { return };
            let engine = PluginEngine { inner };
            let started = std::time::Instant::now();
            let optimized = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.compile(&label, &digest, &bytes).and_then(|component| link(&label, &engine.inner.linker, &component))
            }));
            let Some(code) = code.upgrade() else { return };
            match optimized {
                Ok(Ok(pre)) => {
                    code.install(Compiled { engine: engine.inner.engine.clone(), pre, tier: Tier::Optimized });
                    tracing::info!(plugin = %label, ms = started.elapsed().as_millis() as u64, "optimized code (Cranelift) in use");
                }
                Ok(Err(e)) => {
                    code.fail();
                    tracing::warn!(plugin = %label, error = %e, "Cranelift cannot compile a component Winch compiled; it keeps running Winch's code");
                }
                Err(_) => {
                    code.fail();
                    tracing::error!(plugin = %label, "the background compile panicked; the plugin keeps running Winch's code");
                }
            }
        }));
    }

    /// The component from the artifact cache, if it holds a usable one.
    fn cached(&self, label: &str, digest: &str) -> Option<Component> {
        let cache = self.inner.cache.as_ref()?;
        let artifact = cache.get(label, digest, &self.compat())?;
        // SAFETY: the artifact comes from a folder and file only this user can write (see
        // plugin::cache), and its header ties it to this component's sha256 and to this
        // engine's compatibility hash, with a sha256 of the artifact itself. wasmtime also
        // checks its own header.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize(&self.inner.engine, &artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(plugin = label, error = %e, "discarding an unusable cached artifact; recompiling");
                None
            }
        }
    }

    fn compat(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Compiles with Cranelift, and puts the artifact in the cache if there is one.
    fn compile(&self, label: &str, digest: &str, bytes: &[u8]) -> Result<Component> {
        let engine = &self.inner.engine;
        let compile_err = |source| Error::Compile { plugin: label.to_string(), source };
        self.inner.optimized_compiles.fetch_add(1, Ordering::Relaxed);
        let Some(cache) = &self.inner.cache else {
            return Component::new(engine, bytes).map_err(compile_err);
        };
        let started = std::time::Instant::now();
        let artifact = engine.precompile_component(bytes).map_err(compile_err)?;
        tracing::info!(plugin = label, ms = started.elapsed().as_millis() as u64, "compiled");
        cache.put(label, digest, &self.compat(), &artifact);
        // SAFETY: `artifact` was produced just above by this very engine.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize(engine, &artifact) }.map_err(compile_err)
    }
}

/// Links `component` against the `rule` world of 0.2.0, or failing that of 0.1.0.
fn link(label: &str, linker: &Linker<CallState>, component: &Component) -> Result<RulePre> {
    let mismatch = |source| Error::WorldMismatch { plugin: label.to_string(), source };
    let pre = linker.instantiate_pre(component).map_err(mismatch)?;
    match v0_2::RulePre::new(pre.clone()).and_then(RulePre::v0_2) {
        Ok(p) => Ok(p),
        Err(v0_2_err) => match v0_1::RulePre::new(pre).and_then(RulePre::v0_1) {
            Ok(p) => Ok(p),
            // The 0.2.0 explanation: new plugins are built against it.
            Err(_) => Err(mismatch(v0_2_err)),
        },
    }
}

/// The host functions a rule component may import, for one engine.
fn rule_linker(engine: &Engine) -> Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    super::wasi::add_to_linker(&mut linker).map_err(Error::Engine)?;
    // Both package versions: a component imports the host interface of the one it was
    // built against.
    v0_2::Rule::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(Error::Engine)?;
    v0_1::Rule::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(Error::Engine)?;
    Ok(linker)
}

/// The instance pool's limits: calls at once, and per call its core instances, memories,
/// tables and memory size. Winch's code gets the same, so a component runs under the same
/// limits whichever code it runs.
fn pool_limits(config: &EngineConfig) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    let slots = config.pool_instances.max(1);
    pool.total_component_instances(slots)
        .total_core_instances((slots * 4).max(u32::try_from(config.max_instances_per_call).unwrap_or(u32::MAX)))
        .max_core_instances_per_component(u32::try_from(config.max_instances_per_call).unwrap_or(u32::MAX))
        .total_memories(slots * 2)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_memory_size(config.memory_bytes);
    pool
}

/// Winch's engine, with the same fuel and deadline checks and the same pool limits, or None
/// where Winch does not run. Its pool keeps no pages resident: baseline code runs only until
/// Cranelift's is ready, and what its instances touched goes back to the system.
fn baseline_engine(config: &EngineConfig) -> Option<Baseline> {
    let mut wasm = Config::new();
    wasm.strategy(Strategy::Winch)
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool_limits(config)));
    let engine = match Engine::new(&wasm) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::info!(error = %e, "Winch does not run here; plugins are compiled with Cranelift before use");
            return None;
        }
    };
    match rule_linker(&engine) {
        Ok(linker) => Some(Baseline { engine, linker }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot link Winch's engine; plugins are compiled with Cranelift before use");
            None
        }
    }
}
