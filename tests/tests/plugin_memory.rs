//! What a plugin returns costs the host no more than the limits: ten calls at once, each
//! returning a 40 MB error, and ten returning a 5 MiB object, copy a few KiB out of the guests.
//!
//! The heap is counted by a global allocator of this test binary (the guests' linear memories
//! are mapped by wasmtime, outside it), so the figure is what the host itself copies.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use downsync::plugin::{EngineConfig, Plugin, PluginEngine};
use downsync::sync::Intent;
use downsync_tests::plugins::plugin_path;
use serde_json::json;

/// The system allocator, counting the bytes live and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// arithmetic on the sizes it is asked for.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak of the process's resident memory so far (VmHWM), in KiB, for the log.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn ten_calls_returning_40_mb_errors_at_once_copy_kilobytes_into_the_host() {
    let engine = PluginEngine::new(EngineConfig {
        fuel: 500_000_000,
        deadline_ms: 10_000,
        pool_instances: 16,
        max_instances_per_call: 32,
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        ..EngineConfig::default()
    })
    .expect("engine");
    let plugin =
        Plugin::load_file(&engine, &plugin_path("downsync-plugin-testing-faulty").expect("built")).expect("loads");
    let mk = |fault: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n",
            "annotations": {"downsync.dev/fault": fault}}})
    };
    // Warm: the first call's code and caches are not what is measured.
    let _ = plugin.transform(&mk(""), &Intent::Unknown);

    for fault in ["big-error", "big-output"] {
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let rss_before = peak_rss_kib();
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..10)
                .map(|_| {
                    s.spawn(|| plugin.transform(&mk(fault), &Intent::Unknown).map(|_| ()).map_err(|e| e.to_string()))
                })
                .collect();
            for c in calls {
                let err = c.join().expect("no panic").expect_err(fault);
                let bounded = err.contains("bytes truncated") || err.contains("over the limit");
                assert!(bounded && err.len() < 1500, "{fault}: {err}");
            }
        });
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        eprintln!(
            "{fault}: host heap peak +{} KiB over 10 calls at once; process peak RSS {} -> {} KiB",
            grew >> 10,
            rss_before,
            peak_rss_kib()
        );
        // Before: each call lifted its whole string (40 MB, 5 MiB) into the host first.
        assert!(grew < 8 << 20, "{fault}: the host heap grew by {} KiB", grew >> 10);
    }
}
