//! Per-call store state: the `log` import (escaped, truncated, rate-limited), a WASI context with
//! nothing in it but captured stdio, and the limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::v0_1::downsync::rules::host as host_v0_1;
use super::bindings::v0_2::downsync::rules::host::{self as host_v0_2, Level};
use super::capture::Captured;

/// Characters of one plugin log line kept; the rest is cut.
const LOG_MESSAGE_CHARS: usize = 2048;

/// The state of one store; dropped after the call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    plugin: String,
    object: String,
    /// What the guest wrote to stdout and stderr (a panicking Rust guest writes its message).
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    logs: LogLimiter,
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
    /// A sandbox with no filesystem, network, environment, arguments or stdin, stdout and stderr
    /// captured in memory, frozen clocks and fixed "randomness". Rust's wasm32-wasip2 std imports these WASI interfaces, so they
    /// are linked, but they give a plugin nothing to differ on.
    pub(crate) fn new(plugin: &str, object: &str, memory_cap: usize, instances: usize, logs: LogLimiter) -> Self {
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
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
                    .instances(instances)
                    .tables(16)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_denied: false,
            },
            plugin: plugin.to_string(),
            object: object.to_string(),
            stdout,
            stderr,
            logs,
        }
    }
}

impl CallState {
    /// Names the object of the next call in log lines (a reused session serves many objects).
    pub(crate) fn set_object(&mut self, object: &str) {
        object.clone_into(&mut self.object);
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Writes what the guest printed during the call to the host log, bounded and escaped, and
    /// the count of log lines the rate limit held back. Empties the captures.
    pub(crate) fn flush_output(&self, hook: &str) {
        let (plugin, object) = (self.plugin.as_str(), self.object.as_str());
        for (stream, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, dropped) = captured.take();
            // Printing counts against the same per-plugin budget as `log` lines.
            if text.is_empty() || !self.logs.admit(plugin) {
                continue;
            }
            let text = escape(&text, usize::MAX);
            // stderr is where a Rust guest's panic message goes: worth a warning.
            if stream == "stderr" {
                tracing::warn!(plugin, object, hook, stream, dropped_bytes = dropped, "plugin output: {text}");
            } else {
                tracing::info!(plugin, object, hook, stream, dropped_bytes = dropped, "plugin output: {text}");
            }
        }
        if let Some(n) = self.logs.summary(plugin) {
            tracing::warn!(plugin, suppressed = n, "suppressed {n} log lines from plugin {plugin}");
        }
    }
}

/// Cuts `text` to `max_chars` characters and escapes control characters (newlines included),
/// so that nothing a plugin says can pass for a host log line or move the terminal cursor.
pub(crate) fn escape(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    for c in text.chars().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines a plugin may write per second, and in a burst, across all of its calls.
const LOG_LINES_PER_SEC: f64 = 20.0;
const LOG_BURST: f64 = 100.0;
/// The shortest time between two "suppressed N log lines" summaries of one plugin.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A token bucket of log lines per plugin name, shared by all calls of the engine, so that a
/// plugin cannot flood the host log however many calls it gets. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogLimiter(Arc<Mutex<HashMap<String, Bucket>>>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Lines held back since the last summary.
    suppressed: u64,
    /// When the last summary was written.
    summarized: Option<Instant>,
}

impl LogLimiter {
    /// Whether one more line of `plugin` may be written now.
    pub(crate) fn admit(&self, plugin: &str) -> bool {
        self.admit_at(plugin, Instant::now())
    }

    fn admit_at(&self, plugin: &str, now: Instant) -> bool {
        let mut buckets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(plugin.to_string()).or_insert_with(|| Bucket {
            tokens: LOG_BURST,
            refilled: now,
            suppressed: 0,
            summarized: None,
        });
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * LOG_LINES_PER_SEC).min(LOG_BURST);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.suppressed += 1;
            false
        }
    }

    /// Lines of `plugin` held back since the last summary, at most once per [`SUMMARY_EVERY`];
    /// resets the count when it reports.
    pub(crate) fn summary(&self, plugin: &str) -> Option<u64> {
        self.summary_at(plugin, Instant::now())
    }

    fn summary_at(&self, plugin: &str, now: Instant) -> Option<u64> {
        let mut buckets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.get_mut(plugin)?;
        let due = b.summarized.is_none_or(|at| now.saturating_duration_since(at) >= SUMMARY_EVERY);
        if b.suppressed == 0 || !due {
            return None;
        }
        b.summarized = Some(now);
        Some(std::mem::take(&mut b.suppressed))
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host_v0_2::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, object) = (self.plugin.as_str(), self.object.as_str());
        if !self.logs.admit(plugin) {
            return;
        }
        let message = escape(&message, LOG_MESSAGE_CHARS);
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

impl host_v0_1::Host for CallState {
    fn log(&mut self, level: host_v0_1::Level, message: String) {
        let level = match level {
            host_v0_1::Level::Trace => Level::Trace,
            host_v0_1::Level::Debug => Level::Debug,
            host_v0_1::Level::Info => Level::Info,
            host_v0_1::Level::Warn => Level::Warn,
            host_v0_1::Level::Error => Level::Error,
        };
        host_v0_2::Host::log(self, level, message);
    }
}

impl super::bindings::v0_2::downsync::rules::types::Host for CallState {}
impl super::bindings::v0_1::downsync::rules::types::Host for CallState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_flood_is_cut_to_the_burst_then_the_rate_and_summarized_once_a_second() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        let admitted = (0..10_000).filter(|_| limiter.admit_at("flood", t0)).count();
        assert_eq!(admitted, LOG_BURST as usize);
        assert_eq!(limiter.summary_at("flood", t0), Some(10_000 - LOG_BURST as u64));
        assert!(limiter.admit_at("other", t0), "each plugin has its own bucket");
        assert!(!limiter.admit_at("flood", t0));
        assert_eq!(limiter.summary_at("flood", t0), None, "at most one summary per second");
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..100).filter(|_| limiter.admit_at("flood", t1)).count();
        assert_eq!(admitted, LOG_LINES_PER_SEC as usize, "refilled at the steady rate");
        assert_eq!(limiter.summary_at("flood", t1), Some(1 + 100 - LOG_LINES_PER_SEC as u64));
    }

    #[test]
    fn escape_cuts_and_escapes_control_characters() {
        assert_eq!(escape("a\nb\u{1b}[31mc", 100), "a\\nb\\u{1b}[31mc");
        assert_eq!(escape("héllo wörld", 5), "héllo");
        assert_eq!(escape("quotes \" and \\ stay", 100), "quotes \" and \\ stay");
    }
}
