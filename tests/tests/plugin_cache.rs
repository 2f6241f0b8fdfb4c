//! The precompiled-artifact cache: an entry swapped for another component's is rebuilt, and a cache folder others can write is not used.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use downsync::plugin::{EngineConfig, Plugin, PluginEngine};
use downsync_tests::logs::logged;
use downsync_tests::plugins::plugin_path;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("downsync-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load(cache: &Path, crate_name: &str) -> Plugin {
    let engine = PluginEngine::new(EngineConfig { cache_dir: Some(cache.to_path_buf()), ..EngineConfig::default() })
        .expect("engine");
    let plugin = Plugin::load_file(&engine, &plugin_path(crate_name).expect("built")).expect("loads");
    // The artifact is Cranelift's, written by the background compile when it was not cached.
    assert!(plugin.wait_optimized(std::time::Duration::from_secs(120)), "optimized code in use");
    plugin
}

/// The cache entry of the component with this digest.
fn entry(cache: &Path, digest: &str) -> PathBuf {
    std::fs::read_dir(cache)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(digest)))
        .unwrap_or_else(|| panic!("an entry for {digest}"))
}

#[test]
fn an_artifact_copied_over_another_plugins_entry_is_rebuilt_not_run() {
    let cache = scratch("swap");
    let a = load(&cache, "downsync-plugin-minimal");
    let b = load(&cache, "downsync-plugin-testing-faulty");
    assert_eq!(std::fs::metadata(&cache).expect("cache").permissions().mode() & 0o777, 0o700, "private");
    std::fs::copy(entry(&cache, b.digest()), entry(&cache, a.digest())).expect("swap");

    let (again, log) = logged(|| load(&cache, "downsync-plugin-minimal"));
    assert_eq!(again.name(), "minimal", "a's entry runs a's code, not b's");
    assert!(log.contains("does not match its entry"), "a warning: {log}");

    let (_, log) = logged(|| load(&cache, "downsync-plugin-minimal"));
    assert!(!log.contains("WARN"), "the entry was rebuilt: {log}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    let cache = scratch("open");
    std::fs::create_dir_all(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (plugin, log) = logged(|| load(&cache, "downsync-plugin-minimal"));
    assert_eq!(plugin.name(), "minimal", "compiled in memory");
    assert!(log.contains("plugin artifact cache not used") && log.contains("writable by group or others"), "{log}");
    assert_eq!(std::fs::read_dir(&cache).expect("dir").count(), 0, "nothing written there");
    let _ = std::fs::remove_dir_all(&cache);
}
