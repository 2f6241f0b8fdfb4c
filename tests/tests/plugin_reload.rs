//! Hot reload through the file system: a plain write, a rename and a ConfigMap `..data` symlink swap each become visible; a broken file keeps the old version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use downsync::plugin::{
    EngineConfig, Metrics, PluginEngine, PluginRegistry, PluginSet, RegistryConfig, Reloader, WatchConfig,
};
use downsync_tests::plugins::plugin_path;
use serde_json::{Value, json};

/// Version A stamps an annotation on ConfigMaps; version B stamps a label.
fn version_a() -> Vec<u8> {
    std::fs::read(plugin_path("downsync-plugin-minimal").expect("built")).expect("read")
}

fn version_b() -> Vec<u8> {
    std::fs::read(plugin_path("downsync-plugin-testing-faulty").expect("built")).expect("read")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("downsync-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn start(dir: &Path) -> (Arc<Reloader>, downsync::plugin::WatchHandle) {
    start_debounced(dir, Duration::from_millis(50))
}

fn start_debounced(dir: &Path, debounce: Duration) -> (Arc<Reloader>, downsync::plugin::WatchHandle) {
    let engine = PluginEngine::new(EngineConfig {
        fuel: 50_000_000,
        deadline_ms: 2_000,
        memory_bytes: 16 << 20,
        pool_instances: 8,
        max_instances_per_call: 32,
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        tiered_compilation: true,
        ..EngineConfig::default()
    })
    .expect("engine");
    let registry = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let reloader = Reloader::new(engine, dir, RegistryConfig::default(), registry);
    // A long resync: what becomes visible must come from the watcher.
    let handle = reloader.watch(WatchConfig { debounce, resync: Duration::from_secs(600) }).expect("watch");
    (reloader, handle)
}

/// Which version the registry runs now: "a", "b" or "none".
fn running(reloader: &Reloader) -> &'static str {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
    let out: Value = reloader.registry().transform(cm).expect("transform");
    if out.pointer("/metadata/annotations/downsync.dev~1minimal").is_some() {
        "a"
    } else if out.pointer("/metadata/labels/faulty").is_some() {
        "b"
    } else {
        "none"
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_plain_write_and_a_rename_swap_the_plugin_and_a_broken_file_keeps_the_old_one() {
    let dir = scratch("write");
    std::fs::write(dir.join("rule.wasm"), version_a()).expect("write a");
    let (reloader, _handle) = start(&dir);
    assert_eq!(running(&reloader), "a", "the initial scan loads the folder");

    std::fs::write(dir.join("rule.wasm"), version_b()).expect("write b");
    wait_for("version b after a plain write", || running(&reloader) == "b");

    std::fs::write(dir.join(".rule.wasm.tmp"), version_a()).expect("write tmp");
    std::fs::rename(dir.join(".rule.wasm.tmp"), dir.join("rule.wasm")).expect("rename");
    wait_for("version a after a rename", || running(&reloader) == "a");
    let good_digest = reloader.status()[0].digest.clone();

    std::fs::write(dir.join("rule.wasm"), b"\0asm definitely not a component").expect("write garbage");
    wait_for("the broken file to be reported", || reloader.status().iter().any(|s| s.last_error.is_some()));
    let status = reloader.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].name, "minimal", "the last good version is still the one in use");
    assert_eq!(status[0].digest, good_digest);
    assert!(status[0].last_error.as_deref().is_some_and(|e| e.contains("not a loadable wasm component")), "{status:?}");
    assert!(reloader.registry().metrics().reload_failures("rule") >= 1);
    assert_eq!(running(&reloader), "a", "the old behaviour stays");

    std::fs::write(dir.join("rule.wasm"), version_b()).expect("write b again");
    wait_for("recovery with version b", || running(&reloader) == "b");
    assert_eq!(reloader.status()[0].last_error, None, "a good version clears the error");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_finished_write_or_a_rename_is_acted_on_without_waiting_for_quiet() {
    let dir = scratch("settled");
    std::fs::write(dir.join("rule.wasm"), version_a()).expect("write a");
    // A quiet period longer than the test's wait: only a change known to be complete can load.
    let (reloader, _handle) = start_debounced(&dir, Duration::from_secs(3600));
    assert_eq!(running(&reloader), "a");

    std::fs::write(dir.join("rule.wasm"), version_b()).expect("write b");
    wait_for("version b once the writer closed the file", || running(&reloader) == "b");

    std::fs::write(dir.join(".rule.wasm.tmp"), version_a()).expect("write tmp");
    std::fs::rename(dir.join(".rule.wasm.tmp"), dir.join("rule.wasm")).expect("rename");
    wait_for("version a once renamed in", || running(&reloader) == "a");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_configmap_volume_data_symlink_swap_is_picked_up() {
    let dir = scratch("configmap");
    // The kubelet's layout: ..<timestamp>/ holds the files, ..data points at it, and each
    // visible file is a symlink through ..data.
    std::fs::create_dir(dir.join("..2026_01_01_00_00_00.1")).expect("mkdir");
    std::fs::write(dir.join("..2026_01_01_00_00_00.1/rule.wasm"), version_a()).expect("write a");
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/rule.wasm", dir.join("rule.wasm")).expect("rule.wasm");
    let (reloader, _handle) = start(&dir);
    assert_eq!(running(&reloader), "a");

    std::fs::create_dir(dir.join("..2026_01_01_00_01_00.2")).expect("mkdir");
    std::fs::write(dir.join("..2026_01_01_00_01_00.2/rule.wasm"), version_b()).expect("write b");
    std::os::unix::fs::symlink("..2026_01_01_00_01_00.2", dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.1")).expect("old dir");
    wait_for("version b after the ..data swap", || running(&reloader) == "b");
    assert_eq!(reloader.status().len(), 1, "hidden entries are not plugins");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn links_out_of_the_folder_and_oversized_files_are_refused_before_they_are_read() {
    let root = scratch("outside");
    let (dir, elsewhere) = (root.join("plugins"), root.join("elsewhere"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    // Inside: the kubelet's layout keeps working.
    std::fs::create_dir(dir.join("..2026_01_01_00_00_00.1")).expect("mkdir");
    std::fs::write(dir.join("..2026_01_01_00_00_00.1/rule.wasm"), version_a()).expect("write a");
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/rule.wasm", dir.join("rule.wasm")).expect("rule.wasm");
    // Out: a component elsewhere, and fixtures that are /etc.
    std::fs::write(elsewhere.join("other.wasm"), version_b()).expect("write b");
    std::os::unix::fs::symlink("../elsewhere/other.wasm", dir.join("other.wasm")).expect("link out");
    std::os::unix::fs::symlink("/etc", dir.join("rule.fixtures")).expect("fixtures link out");
    // Too large: 1 GiB on paper (sparse), refused without reading a byte.
    let big = std::fs::File::create(dir.join("big.wasm")).expect("create");
    big.set_len(1 << 30).expect("set_len");
    let started = Instant::now();
    let (reloader, handle) = start(&dir);
    assert!(started.elapsed() < Duration::from_secs(20), "no 1 GiB read: {:?}", started.elapsed());

    let status = reloader.status();
    let error = |name: &str| {
        status.iter().find(|s| s.file.ends_with(name)).and_then(|s| s.last_error.clone()).unwrap_or_default()
    };
    assert!(error("other.wasm").contains("outside the plugins folder"), "{status:?}");
    assert!(error("big.wasm").contains("over the limit of 64.0 MiB (the limit of a plugin file)"), "{status:?}");
    let rule = error("rule.wasm");
    assert!(rule.contains("rule.fixtures") && rule.contains("outside the plugins folder"), "{status:?}");
    assert_eq!(running(&reloader), "none", "the rule whose fixtures lead out is refused too");

    drop(handle);

    // Fixtures through ..data, as a ConfigMap holds them (`items` with paths): followed.
    let dir = root.join("configmap");
    let data = dir.join("..2026_01_01_00_00_00.1");
    let case = data.join("rule.fixtures/stamps");
    std::fs::create_dir_all(&case).expect("case");
    std::fs::write(data.join("rule.wasm"), version_a()).expect("write a");
    std::fs::write(case.join("desired.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n")
        .expect("desired");
    std::fs::write(
        case.join("expected.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n, annotations: {downsync.dev/minimal: seen}}\n",
    )
    .expect("expected");
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/rule.wasm", dir.join("rule.wasm")).expect("rule.wasm");
    std::os::unix::fs::symlink("..data/rule.fixtures", dir.join("rule.fixtures")).expect("rule.fixtures");
    let (reloader, _handle) = start(&dir);
    assert_eq!(running(&reloader), "a", "{:?}", reloader.status());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_refused_version_is_never_compiled_by_cranelift_and_an_accepted_one_is() {
    // A fresh cache: nothing is found there, so a new version starts on Winch's code, and the
    // engine counts the components Cranelift compiles.
    let cache = scratch("refused-cache");
    let engine = PluginEngine::new(EngineConfig {
        pool_instances: 8,
        cache_dir: Some(cache.clone()),
        tiered_compilation: true,
        ..EngineConfig::default()
    })
    .expect("engine");
    if !engine.tiered() {
        return; // No Winch on this machine: every version is compiled by Cranelift first.
    }
    let dir = scratch("refused");
    std::fs::write(dir.join("rule.wasm"), version_a()).expect("write a");
    let case = dir.join("rule.fixtures/wrong");
    std::fs::create_dir_all(&case).expect("fixture dir");
    std::fs::write(case.join("desired.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n")
        .expect("desired");
    std::fs::write(case.join("expected.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n")
        .expect("expected");
    let registry = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let reloader = Reloader::new(engine.clone(), &dir, RegistryConfig::default(), registry);
    reloader.scan().expect("scan");
    assert!(reloader.status()[0].last_error.as_deref().is_some_and(|e| e.contains("fixture wrong")));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(engine.optimized_compiles(), 0, "the refused version was not compiled by Cranelift");

    std::fs::remove_dir_all(dir.join("rule.fixtures")).expect("fixtures gone");
    std::fs::write(dir.join("rule.wasm"), version_b()).expect("write b");
    reloader.scan().expect("scan");
    assert_eq!(running(&reloader), "b");
    wait_for("Cranelift's compile of the accepted version", || engine.optimized_compiles() > 0);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_version_that_fails_its_fixtures_is_refused() {
    let dir = scratch("fixtures");
    std::fs::write(dir.join("rule.wasm"), version_a()).expect("write a");
    let case = dir.join("rule.fixtures/stamps");
    std::fs::create_dir_all(&case).expect("fixture dir");
    std::fs::write(case.join("desired.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n")
        .expect("desired");
    std::fs::write(
        case.join("expected.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n, annotations: {downsync.dev/minimal: seen}}\n",
    )
    .expect("expected");
    let (reloader, _handle) = start(&dir);
    assert_eq!(running(&reloader), "a", "version a passes its fixture");

    std::fs::write(dir.join("rule.wasm"), version_b()).expect("write b");
    wait_for("version b to be refused", || reloader.status().iter().any(|s| s.last_error.is_some()));
    let error = reloader.status()[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("fixture stamps") && error.contains("/metadata/annotations"), "{error}");
    assert_eq!(running(&reloader), "a");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn twenty_swaps_under_a_thousand_objects_in_flight_lose_no_call() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let dir = scratch("load");
    let (a, b) = (version_a(), version_b());
    std::fs::write(dir.join("rule.wasm"), &a).expect("write a");
    let (reloader, _handle) = start(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_a, seen_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (reloader, stop, seen_a, seen_b) = (reloader.clone(), stop.clone(), seen_a.clone(), seen_b.clone());
            std::thread::spawn(move || -> Result<usize, String> {
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..250 {
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{w}-{i}"), "namespace": "n"}});
                        let out = reloader.registry().transform(cm).map_err(|e| e.to_string())?;
                        let has_a = out.pointer("/metadata/annotations/downsync.dev~1minimal").is_some();
                        let has_b = out.pointer("/metadata/labels/faulty").is_some();
                        match (has_a, has_b) {
                            (true, false) => seen_a.fetch_add(1, Ordering::Relaxed),
                            (false, true) => seen_b.fetch_add(1, Ordering::Relaxed),
                            other => return Err(format!("object c{w}-{i} saw {other:?}: {out}")),
                        };
                        calls += 1;
                    }
                }
                Ok(calls)
            })
        })
        .collect();

    for swap in 0..20 {
        let (bytes, want) = if swap % 2 == 0 { (&b, "b") } else { (&a, "a") };
        std::fs::write(dir.join(".rule.wasm.tmp"), bytes).expect("write tmp");
        std::fs::rename(dir.join(".rule.wasm.tmp"), dir.join("rule.wasm")).expect("rename");
        wait_for(&format!("swap {swap} to version {want}"), || running(&reloader) == want);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.join().expect("worker thread").expect("every call in flight succeeded on one version");
    }
    assert!(total >= 1_000, "at least a thousand objects went through ({total})");
    assert!(seen_a.load(Ordering::Relaxed) > 0 && seen_b.load(Ordering::Relaxed) > 0);
    assert!(reloader.status().iter().all(|s| s.last_error.is_none()), "{:?}", reloader.status());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_overlapping_newcomer_is_refused_and_retried_once_the_other_is_gone() {
    let dir = scratch("overlap");
    let engine = PluginEngine::new(EngineConfig {
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        ..EngineConfig::default()
    })
    .expect("engine");
    let registry = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let reloader = Reloader::new(engine, &dir, RegistryConfig::default(), registry);
    let copy = |krate: &str, name: &str| {
        std::fs::copy(plugin_path(krate).expect("built"), dir.join(name)).expect("copy");
    };

    copy("downsync-plugin-service", "a-service.wasm");
    assert!(reloader.scan().expect("scan"), "the first plugin is loaded");
    copy("downsync-plugin-testing-overlap", "b-overlap.wasm");
    assert!(!reloader.scan().expect("scan"), "the newcomer does not change the set");
    let status = reloader.status();
    let overlap = status.iter().find(|s| s.file.ends_with("b-overlap.wasm")).expect("status of the newcomer");
    let error = overlap.last_error.clone().unwrap_or_default();
    assert!(error.contains("overlap") && error.contains("service") && error.contains("/spec/ports/0"), "{error}");
    assert_eq!(overlap.digest, None, "nothing of it is in use");
    assert_eq!(reloader.registry().snapshot().plugins().len(), 1);

    std::fs::remove_file(dir.join("a-service.wasm")).expect("remove");
    assert!(reloader.scan().expect("scan"));
    let names: Vec<String> =
        reloader.registry().snapshot().plugins().iter().map(|l| l.plugin.name().to_string()).collect();
    assert_eq!(names, ["overlap"], "the refused newcomer is tried again once the collision is gone");
    assert!(reloader.status().iter().all(|s| s.last_error.is_none()), "{:?}", reloader.status());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_newcomer_is_reported_once_not_rechecked_in_a_loop_and_the_watch_stops_on_drop() {
    let dir = scratch("refused-once");
    std::fs::copy(plugin_path("downsync-plugin-service").expect("built"), dir.join("a-service.wasm")).expect("copy");
    std::fs::copy(plugin_path("downsync-plugin-testing-overlap").expect("built"), dir.join("b-overlap.wasm"))
        .expect("copy");
    let (reloader, handle) = start(&dir);
    let refused =
        |r: &Reloader| r.status().iter().any(|s| s.file.ends_with("b-overlap.wasm") && s.last_error.is_some());
    assert!(refused(&reloader), "the initial scan refuses the overlapping newcomer");
    // Idle for two seconds: each scan opens every file, which must not set off another scan
    // that checks (and reports) the same refused bytes again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reloader.registry().metrics().reload_failures("b-overlap"), 1, "reported once");

    // A change to the set it collided with is a reason to try it again: it loads.
    std::fs::remove_file(dir.join("a-service.wasm")).expect("remove");
    wait_for("the newcomer to load once the collision is gone", || {
        reloader.registry().snapshot().plugins().iter().any(|l| l.plugin.name() == "overlap")
    });
    assert_eq!(reloader.registry().metrics().reload_failures("b-overlap"), 1);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(handle);
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(Duration::from_secs(5)).expect("dropping the handle stops the watch thread");
    assert_eq!(Arc::strong_count(&reloader), 1, "the reload thread let go of the reloader");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stamp test component with `marker` in place of its own.
fn stamp(marker: &str) -> Vec<u8> {
    use downsync_plugin_testing_stamp::MARKER;
    let base = std::fs::read(plugin_path("downsync-plugin-testing-stamp").expect("built")).expect("read");
    downsync_tests::bench::reload::patch_bytes(&base, MARKER.as_bytes(), marker.as_bytes()).expect("patch")
}

fn start_with(dir: &Path, config: RegistryConfig) -> (Arc<Reloader>, downsync::plugin::WatchHandle) {
    let engine = PluginEngine::new(EngineConfig {
        cache_dir: Some(std::env::temp_dir().join("downsync-test-component-cache")),
        ..EngineConfig::default()
    })
    .expect("engine");
    let registry = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let reloader = Reloader::new(engine, dir, config, registry);
    let handle = reloader
        .watch(WatchConfig { debounce: Duration::from_millis(50), resync: Duration::from_secs(600) })
        .expect("watch");
    (reloader, handle)
}

/// The stamp the registry writes now, or the error.
fn stamped(reloader: &Reloader) -> Result<String, String> {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
    let out = reloader.registry().transform(cm).map_err(|e| e.to_string())?;
    Ok(out.pointer("/metadata/annotations/bench.downsync.dev~1stamp").and_then(Value::as_str).unwrap_or("none").into())
}

#[test]
fn a_shadow_never_writes_and_is_withdrawn_when_the_file_goes_back_to_the_active_version() {
    use downsync_plugin_testing_stamp::variant;
    let dir = scratch("shadow-revert");
    let mut config: RegistryConfig =
        serde_yaml_ng::from_str("plugins:\n  \"*\":\n    rollout:\n      mode: shadow\n").expect("config");
    if let Some(all) = config.plugins.get_mut("*") {
        all.rollout.window_calls = 1000;
    }
    std::fs::write(dir.join("stamp.wasm"), stamp(&variant(1))).expect("write v1");
    let (reloader, _handle) = start_with(&dir, config);
    assert_eq!(stamped(&reloader).as_deref(), Ok(variant(1).as_str()));

    std::fs::write(dir.join("stamp.wasm"), stamp(&variant(2))).expect("write v2");
    wait_for("v2 in shadow", || reloader.status().iter().any(|s| s.shadow_digest.is_some()));
    for _ in 0..3 {
        assert_eq!(stamped(&reloader).as_deref(), Ok(variant(1).as_str()), "the active version writes");
    }
    assert_eq!(reloader.registry().metrics().divergences("stamp"), 3);

    std::fs::write(dir.join("stamp.wasm"), stamp(&variant(1))).expect("write v1 again");
    wait_for("the shadow to be withdrawn", || reloader.status().iter().all(|s| s.shadow_digest.is_none()));
    assert_eq!(stamped(&reloader).as_deref(), Ok(variant(1).as_str()));
}

#[test]
fn a_swapped_in_version_that_traps_is_rolled_back_to_the_previous_one() {
    use downsync_plugin_testing_stamp::{TRAP, variant};
    let dir = scratch("rollback");
    std::fs::write(dir.join("stamp.wasm"), stamp(&variant(1))).expect("write v1");
    let (reloader, _handle) = start_with(&dir, RegistryConfig::default());
    std::fs::write(dir.join("stamp.wasm"), stamp(TRAP)).expect("write the broken one");
    wait_for("the broken version in use", || stamped(&reloader).is_err());
    // Five failed calls (minCalls) over 50%: the reload thread is woken and rolls it back.
    for _ in 0..5 {
        let _ = stamped(&reloader);
    }
    wait_for("v1 back", || stamped(&reloader).as_deref() == Ok(variant(1).as_str()));
    assert_eq!(reloader.registry().metrics().rollbacks("stamp"), 1);
    let status = reloader.status();
    let refused = status.iter().find_map(|s| s.last_error.clone()).unwrap_or_default();
    assert!(refused.contains("rolled back"), "{refused}");
    // The broken file stays on disk and is not loaded again.
    std::thread::sleep(Duration::from_millis(300));
    assert!(reloader.scan().is_ok());
    assert_eq!(stamped(&reloader).as_deref(), Ok(variant(1).as_str()));
}
