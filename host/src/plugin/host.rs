//! Per-call store state: the `log` import, a WASI context with nothing in it, and the limits.

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::downsync::rules::host::{Host, Level};

/// The state of one store; dropped after the call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    plugin: String,
    object: String,
}

/// A clock stopped at the epoch: plugins must give the same verdict for the same object at any
/// time, so the only clock they see never moves.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl CallState {
    /// A sandbox with no filesystem, network, environment, arguments or stdio, frozen clocks
    /// and fixed "randomness". Rust's wasm32-wasip2 std imports these WASI interfaces, so they
    /// are linked, but they give a plugin nothing to differ on.
    pub(crate) fn new(plugin: &str, object: &str, memory_cap: usize) -> Self {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(Deterministic::new(vec![0x5a]))
            .insecure_random(Deterministic::new(vec![0xa5]))
            .insecure_random_seed(0)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(memory_cap)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_denied: false,
            },
            plugin: plugin.to_string(),
            object: object.to_string(),
        }
    }
}

impl CallState {
    /// Names the object of the next call in log lines (a reused session serves many objects).
    pub(crate) fn set_object(&mut self, object: &str) {
        object.clone_into(&mut self.object);
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let message: String = message.chars().take(2048).collect();
        let (plugin, object) = (self.plugin.as_str(), self.object.as_str());
        match level {
            Level::Trace => tracing::trace!(plugin, object, "{message}"),
            Level::Debug => tracing::debug!(plugin, object, "{message}"),
            Level::Info => tracing::info!(plugin, object, "{message}"),
            Level::Warn => tracing::warn!(plugin, object, "{message}"),
            Level::Error => tracing::error!(plugin, object, "{message}"),
        }
    }
}

/// `StoreLimits`, plus a record of whether it refused a memory growth, so that a trap can be
/// reported as "memory" rather than by matching an error message.
pub(crate) struct Limits {
    inner: StoreLimits,
    pub(crate) memory_denied: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.memory_denied = true;
        }
        r
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl super::bindings::downsync::rules::types::Host for CallState {}
