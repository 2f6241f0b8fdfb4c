//! Plugins that misbehave at the edges of the sandbox (stdio, sockets, panics on a tokio worker, oversized output, log floods, greedy scopes) and must not harm the host.

use downsync::plugin::{CallFailure, EngineConfig, Error, Oversize, Plugin, PluginEngine};
use downsync::sync::Intent;
use downsync_tests::logs::logged;
use downsync_tests::plugins::plugin_path;
use serde_json::{Value, json};

/// Small limits keep the runaway plugins quick to stop; the defaults' memory leaves room for
/// the 40 MB error string.
fn engine() -> PluginEngine {
    mk_engine(EngineConfig { fuel: 500_000_000, deadline_ms: 5_000, ..test_config() })
}

/// What every engine here shares: a small pool and the tests' compiled-artifact cache.
fn test_config() -> EngineConfig {
    EngineConfig {
        pool_instances: 8,
        max_instances_per_call: 32,
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        ..EngineConfig::default()
    }
}

fn mk_engine(config: EngineConfig) -> PluginEngine {
    PluginEngine::new(config).expect("engine")
}

fn faulty(engine: &PluginEngine) -> Plugin {
    Plugin::load_file(engine, &plugin_path("downsync-plugin-testing-faulty").expect("built")).expect("loads")
}

fn mk_configmap(fault: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n",
        "annotations": {"downsync.dev/fault": fault}}})
}

/// What every failed call's message must look like: one short line.
fn assert_one_line(err: &Error) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(msg.len() < 300, "short ({} chars): {msg}", msg.len());
}

/// Stdio, sockets and panics, called straight on a worker thread of a multi-threaded runtime:
/// wasmtime-wasi's blocking shims would call `Handle::block_on` there and panic the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_panics_stdio_and_udp_on_a_tokio_worker_do_not_panic_the_host() {
    let engine = engine();
    let plugin = faulty(&engine);

    let err = plugin.transform(&mk_configmap("trap"), &Intent::Unknown).expect_err("a panic is an error");
    assert!(matches!(err, Error::Call { kind: CallFailure::Trap, .. }), "{err}");
    assert!(err.to_string().contains("faulty plugin asked to trap"), "the guest's panic message: {err}");
    assert_one_line(&err);

    let out = plugin.transform(&mk_configmap("print"), &Intent::Unknown).expect("printing is harmless").value;
    assert_eq!(out["metadata"]["labels"]["faulty"], "ok");

    let err = plugin
        .transform(&mk_configmap("udp"), &Intent::Unknown)
        .expect_err("the guest reports what came of its socket");
    let Error::Rejected { message, .. } = &err else { panic!("the guest got an error and returned it: {err}") };
    assert!(message.starts_with("udp bind failed"), "the socket was refused to the guest: {message}");

    let out = plugin.transform(&mk_configmap(""), &Intent::Unknown).expect("the plugin still works").value;
    assert_eq!(out["metadata"]["labels"]["faulty"], "ok");
}

/// A sleep waits on the plugin's frozen clock, which never gets there: the call fails at once,
/// on any thread, rather than holding the thread or needing a tokio timer.
#[test]
fn a_sleeping_plugin_fails_instead_of_blocking_the_thread() {
    let engine = engine();
    let plugin = faulty(&engine);
    let err = plugin.transform(&mk_configmap("sleep"), &Intent::Unknown).expect_err("a plugin cannot sleep");
    // A trap, not the deadline: the call ended at the sleep instead of waiting out its time.
    assert!(matches!(err, Error::Call { kind: CallFailure::Trap, .. }), "{err}");
    assert!(err.to_string().contains("plugins cannot block"), "{err}");
    assert_one_line(&err);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let on_worker = runtime.block_on(async {
        tokio::spawn(async move { plugin.transform(&mk_configmap("sleep"), &Intent::Unknown).is_err() }).await
    });
    assert!(on_worker.expect("no host panic on a tokio worker"));
}

/// A rule that spins on an object until the wall-clock deadline keeps ending there, call after
/// call (its later calls run on a thread of their own at the lowest CPU priority), and the
/// object's first call that ends in time, its fault gone, succeeds as before.
#[test]
fn a_call_that_keeps_running_to_its_deadline_keeps_failing_there_and_the_object_recovers() {
    // Fuel for minutes of spinning, so that the 300 ms deadline is what stops the calls.
    let engine = mk_engine(EngineConfig { fuel: u64::MAX / 2, deadline_ms: 300, ..test_config() });
    let plugin = faulty(&engine);
    for call in 1..=3 {
        let err = plugin.transform(&mk_configmap("loop"), &Intent::Unknown).expect_err("a spinning call fails");
        assert!(matches!(err, Error::Call { kind: CallFailure::Deadline, .. }), "call {call}: {err}");
        assert!(err.to_string().contains("n/c"), "call {call} names the object: {err}");
        assert_one_line(&err);
    }
    let out = plugin.transform(&mk_configmap(""), &Intent::Unknown).expect("the object's fault is gone").value;
    assert_eq!(out["metadata"]["labels"]["faulty"], "ok");
}

/// The same on a current-thread runtime (`#[tokio::main(flavor = "current_thread")]`, tests).
#[tokio::test]
async fn a_guest_panic_on_a_current_thread_runtime_is_a_trap_error() {
    let engine = engine();
    let plugin = faulty(&engine);
    let err =
        plugin.preserve(&mk_configmap(""), &mk_configmap("trap"), &Intent::Unknown).expect_err("a panic is an error");
    assert!(matches!(err, Error::Call { kind: CallFailure::Trap, .. }), "{err}");
    plugin.transform(&mk_configmap("print"), &Intent::Unknown).expect("printing is harmless");
}

#[test]
fn what_a_guest_prints_lands_in_the_host_log_bounded_and_escaped() {
    let engine = engine();
    let plugin = faulty(&engine);
    let (out, log) = logged(|| plugin.transform(&mk_configmap("print"), &Intent::Unknown).map_err(|e| e.to_string()));
    out.expect("printing is harmless");
    let stdout =
        log.lines().find(|l| l.contains("stream=\"stdout\"")).unwrap_or_else(|| panic!("stdout logged: {log}"));
    assert!(stdout.contains(r"faulty plugin writes to stdout\nsecond line"), "escaped on one line: {stdout}");
    assert!(stdout.contains("plugin=\"faulty\"") && stdout.contains("object=\"ConfigMap n/c\""), "{stdout}");
    assert!(log.lines().any(|l| l.contains("stream=\"stderr\"") && l.contains("writes to stderr")), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("second line")), "no line of the guest's own: {log}");
}

#[test]
fn call_errors_are_one_line_with_the_cause_and_no_backtrace() {
    let engine = mk_engine(EngineConfig { fuel: 50_000_000, memory_bytes: 16 << 20, ..test_config() });
    let plugin = faulty(&engine);
    for (fault, cause) in [
        ("trap", "guest panicked: faulty plugin asked to trap"),
        ("loop", "wasm trap: all fuel consumed"),
        ("memory", "memory"),
    ] {
        let err = plugin.transform(&mk_configmap(fault), &Intent::Unknown).expect_err(fault);
        let msg = err.to_string();
        assert!(msg.starts_with("plugin faulty: transform on ConfigMap n/c failed ("), "{fault}: {msg}");
        assert!(msg.contains(cause), "{fault}: the cause, {cause:?}: {msg}");
        assert!(!msg.contains("backtrace"), "{fault}: {msg}");
        assert_one_line(&err);
    }
}

#[test]
fn oversized_output_errors_and_ignore_paths_are_bounded() {
    let engine = engine();
    let plugin = faulty(&engine);

    let err = plugin.transform(&mk_configmap("big-error"), &Intent::Unknown).expect_err("rejected");
    let Error::Rejected { message, .. } = &err else { panic!("{err}") };
    assert!(message.len() < 1200, "cut to about 1 KiB, not {} bytes", message.len());
    // Cut in the guest's memory: 976 bytes copied out, and the marker, within 1 KiB.
    assert!(message.ends_with(&format!("… ({} bytes truncated)", (40 << 20) - 976)), "{}", &message[900..]);

    let err = plugin.transform(&mk_configmap("big-output"), &Intent::Unknown).expect_err("too large");
    assert!(matches!(err, Error::TooLarge { hook: "transform", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("plugin faulty") && msg.contains("ConfigMap n/c"), "{msg}");
    assert!(msg.contains(&format!("over the limit of {}", 4 << 20)), "{msg}");
    let err = plugin.preserve(&mk_configmap(""), &mk_configmap("big-output"), &Intent::Unknown).expect_err("too large");
    assert!(matches!(err, Error::TooLarge { hook: "preserve", .. }), "{err}");
    assert_eq!(err.failure(), Some(CallFailure::Contract));

    let err = plugin.ignore_paths("", "ManyPaths").expect_err("too many");
    assert!(err.to_string().contains("100000 paths, over the limit of 1024"), "{err}");
    let err = plugin.ignore_paths("", "LongPath").expect_err("too long");
    assert!(matches!(err, Error::TooLarge { what: Oversize::Path, .. }), "{err}");
    assert!(plugin.ignore_paths("", "ConfigMap").expect("fine").value.is_empty());
}

#[test]
fn a_log_flood_is_rate_limited_and_summarized_and_forged_lines_are_escaped() {
    let plugin = faulty(&engine());
    let (out, log) =
        logged(|| plugin.transform(&mk_configmap("log-flood"), &Intent::Unknown).map_err(|e| e.to_string()));
    out.expect("flooding is not an error");
    let lines = log.lines().filter(|l| l.contains("flood line")).count();
    // The burst, plus what the bucket refills (20 a second) while the call runs.
    assert!((100..=120).contains(&lines), "about the burst of 100 lines, not {lines}");
    assert!(log.contains(&format!("suppressed {} log lines from plugin faulty", 10_000 - lines)), "{log}");

    // The bucket is per plugin and shared by calls: a second flood right away gets almost nothing.
    let (_, log) = logged(|| plugin.transform(&mk_configmap("log-flood"), &Intent::Unknown).map_err(|e| e.to_string()));
    let lines = log.lines().filter(|l| l.contains("flood line")).count();
    assert!(lines <= 5, "the second flood gets the refill only, not {lines} lines");

    // A fresh engine has a full bucket again.
    let plugin = faulty(&engine());
    let (_, log) = logged(|| plugin.transform(&mk_configmap("log-forge"), &Intent::Unknown).map_err(|e| e.to_string()));
    let forged = log.lines().find(|l| l.contains("forged host line")).unwrap_or_else(|| panic!("logged: {log}"));
    assert!(forged.contains(r"innocent\n2026-01-01T00:00:00.000000Z ERROR"), "the newline is escaped: {forged}");
    assert!(forged.contains(r"\u{1b}[31m") && !forged.contains('\u{1b}'), "so is the escape sequence: {forged}");
}

#[test]
fn a_plugin_whose_scope_covers_downsyncs_labels_is_refused_at_load() {
    let engine = engine();
    let err = Plugin::load_file(&engine, &plugin_path("downsync-plugin-testing-reserved").expect("built"))
        .expect_err("refused");
    assert!(
        matches!(&err, Error::ReservedScope { plugin, scope, path }
            if plugin == "reserved" && scope == "/metadata/labels/*" && path == "/metadata/labels/downsync.dev~1managed-by"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("reserved") && msg.contains("downsync.dev~1managed-by"), "{msg}");
}
