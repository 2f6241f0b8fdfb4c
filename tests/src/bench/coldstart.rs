//! Section 7: loading 10 plugins with an empty artifact cache, and again with the cache warm.
//!
//! The 10 are the 4 built-ins and 6 copies of them, each copy made distinct by a custom section
//! appended to the component (a new sha256, so a real compile, as 10 different plugins would
//! need).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use downsync::plugin::{EngineConfig, Plugin, PluginEngine};

use super::report::Section;
use super::timing::{median, millis, ratio};

/// The built-in components.
pub const BUILTINS: [&str; 4] = [
    "downsync_plugin_service.wasm",
    "downsync_plugin_persistent_volume.wasm",
    "downsync_plugin_immutable_config.wasm",
    "downsync_plugin_service_account.wasm",
];

/// `bytes` with a custom section `name` appended: the same component, a different digest.
pub fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    leb128(&mut content, name.len() as u64);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, content.len() as u64);
    out.extend_from_slice(&content);
    out
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes the 10 plugin files into `dir`; returns their paths.
pub fn ten_plugins(built: &Path, dir: &Path, salt: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for i in 0..10 {
        let src = built.join(BUILTINS[i % BUILTINS.len()]);
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let bytes = if i < BUILTINS.len() {
            bytes
        } else {
            with_custom_section(&bytes, "downsync-bench-copy", format!("{salt}-{i}").as_bytes())
        };
        let path = dir.join(format!("plugin-{i}.wasm"));
        std::fs::write(&path, bytes)?;
        files.push(path);
    }
    Ok(files)
}

/// The figures of section 7.
#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Building the engine (pooling allocator, linker, ticker).
    pub engine: Duration,
    /// Loading the 10 with an empty cache, until all are in use (Winch's compile + instantiate
    /// + describe; Cranelift compiles in the background).
    pub cold: Duration,
    /// From the start of that load until all 10 run Cranelift's code, its artifacts written.
    pub optimized: Duration,
    /// Loading them again in a new engine with the cache filled.
    pub warm: Duration,
    /// Loading them without a cache and without tiering: Cranelift's compile before use.
    pub uncached: Duration,
}

fn load_all(engine: &PluginEngine, files: &[PathBuf]) -> Result<(Duration, Vec<Plugin>)> {
    let t = Instant::now();
    let plugins = files
        .iter()
        .map(|f| Plugin::load_file(engine, f).with_context(|| format!("loading {}", f.display())))
        .collect::<Result<Vec<_>>>()?;
    Ok((t.elapsed(), plugins))
}

/// Measures `rounds` cold and warm loads (medians); `work` is a scratch folder.
pub fn measure(built: &Path, work: &Path, rounds: usize) -> Result<ColdStart> {
    let (mut engines, mut colds, mut optimized, mut warms, mut uncached) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds.max(1) {
        // New bytes every round, so no earlier round's artifacts can help.
        let dir = work.join(format!("coldstart-{round}"));
        let files = ten_plugins(built, &dir.join("plugins"), &format!("{}-{round}", super::run_id()))?;
        let cache = dir.join("cache");
        let config = EngineConfig { cache_dir: Some(cache.clone()), ..EngineConfig::default() };
        let t = Instant::now();
        let engine = PluginEngine::new(config.clone())?;
        engines.push(t.elapsed());
        let t = Instant::now();
        let (cold, plugins) = load_all(&engine, &files)?;
        colds.push(cold);
        for p in &plugins {
            anyhow::ensure!(p.wait_optimized(Duration::from_secs(300)), "{}: no optimized code within 300 s", p.name());
        }
        optimized.push(t.elapsed());
        drop((plugins, engine));
        let engine = PluginEngine::new(config)?;
        warms.push(load_all(&engine, &files)?.0);
        let engine =
            PluginEngine::new(EngineConfig { cache_dir: None, tiered_compilation: false, ..EngineConfig::default() })?;
        uncached.push(load_all(&engine, &files)?.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ColdStart {
        engine: median(&mut engines),
        cold: median(&mut colds),
        optimized: median(&mut optimized),
        warm: median(&mut warms),
        uncached: median(&mut uncached),
    })
}

/// The section for the measured figures.
pub fn section(c: &ColdStart, rounds: usize) -> Section {
    let mut s = Section::new(
        7,
        "Cold start: loading 10 plugins",
        &[
            "engine start",
            "empty cache",
            "empty cache, until Cranelift's code",
            "no cache, not tiered",
            "warm cache",
            "per plugin, empty cache",
            "per plugin, warm cache",
            "empty / warm",
        ],
    );
    s.row(vec![
        millis(c.engine),
        millis(c.cold),
        millis(c.optimized),
        millis(c.uncached),
        millis(c.warm),
        millis(c.cold / 10),
        millis(c.warm / 10),
        ratio(c.cold, c.warm),
    ]);
    s.note(format!(
        "The 4 built-ins plus 6 copies made distinct by an appended custom section, loaded one after the other \
         (as a plugins-folder scan does): read, sha256, compile or deserialise from `EngineConfig.cache_dir`, \
         link, and one instantiation for `describe`. A component not in the cache is in use with Winch's code, \
         and one background thread compiles it with Cranelift and writes its artifact: *until Cranelift's code* \
         is the time until all 10 run that. *no cache, not tiered* is `cache_dir: None` and \
         `tiered_compilation: false`: Cranelift compiles each, on both cores, before it is used. Median of \
         {rounds} rounds, each on new bytes."
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes_multi_byte_lengths() {
        let mut v = Vec::new();
        leb128(&mut v, 624_485);
        assert_eq!(v, [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn a_custom_section_is_appended_with_its_length() {
        let out = with_custom_section(b"head", "ab", b"xyz");
        assert_eq!(out, b"head\x00\x06\x02abxyz");
    }
}
