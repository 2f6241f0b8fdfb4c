//! A heap profile of `downsync run` under heaptrack: what was live at the heap's peak, by owner.
//!
//! heaptrack's preload library records every allocation with its stack; `heaptrack_print`
//! folds the stacks of what was live at the peak, and each stack is charged to the first owner
//! it names (the reflector stores, the state cache, ...). RSS is more than this: code, thread
//! stacks, wasmtime's mappings and the allocator's free lists are not heap.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Bench;

/// Where the profiler's parts are on Debian and Ubuntu.
const LIBRARY_DIRS: [&str; 2] = ["/usr/lib/heaptrack", "/usr/lib/x86_64-linux-gnu/heaptrack"];

/// Owners, by a name in the stack; the first that matches is charged.
const OWNERS: [(&str, &[&str]); 7] = [
    ("watch caches (each cached upstream and downstream object as its JSON text)", &["app::cache"]),
    ("state cache (desired hash and resourceVersion per object)", &["sync::state", "StateCache", "app::state_file"]),
    ("work queue", &["sync::queue"]),
    ("explain record", &["plugin::journal"]),
    ("wasmtime and Cranelift (heap only; pooled memories are mappings)", &["wasmtime", "cranelift"]),
    ("HTTP clients, TLS and watch buffers", &["hyper", "h2::", "kube_client", "rustls", "tower"]),
    (
        "objects being decoded (list pages and watch events, before they are compacted)",
        &["serde_json..value..de", "serde_json::value::de", "ContentRefDeserializer", "ContentDeserializer"],
    ),
];

/// Peak heap by owner, largest first, and the total.
#[derive(Debug, Clone, Default)]
pub struct HeapProfile {
    /// Bytes live at the peak, per owner (largest first; "everything else" last).
    pub owners: Vec<(String, u64)>,
    /// Bytes live at the peak in all.
    pub total: u64,
}

/// The preload library and the interpreter of its output, when heaptrack is installed.
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    LIBRARY_DIRS.iter().map(Path::new).find_map(|dir| {
        let (lib, interpret) = (dir.join("libheaptrack_preload.so"), dir.join("libexec/heaptrack_interpret"));
        (lib.is_file() && interpret.is_file()).then_some((lib, interpret))
    })
}

/// Runs `downsync run ARGS` under heaptrack until ready and quiet for `settle`, stops it and
/// reads the profile.
pub async fn profile(b: &Bench, args: &[String], name: &str, settle: Duration) -> Result<HeapProfile> {
    let Some((lib, interpret)) = tools() else {
        bail!("heaptrack is not installed (Debian: apt-get install heaptrack)")
    };
    let raw = b.work.join(format!("heaptrack-{name}.raw"));
    let env = [
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("DUMP_HEAPTRACK_OUTPUT".to_string(), raw.display().to_string()),
    ];
    let log = b.work.join(format!("downsync-{name}.log"));
    let mut ds = super::process::Downsync::spawn_with_env(&b.downsync, args, &log, &b.cache_home(), &env)?;
    ds.wait_ready(Duration::from_secs(600)).await?;
    tokio::time::sleep(settle).await;
    ds.check_alive()?;
    ds.stop(Duration::from_secs(120)).await?;

    // heaptrack_print reads the interpreted trace compressed.
    let interpreted = b.work.join(format!("heaptrack-{name}.gz"));
    let status = Command::new("sh")
        .args(["-c", "\"$0\" < \"$1\" | gzip > \"$2\""])
        .arg(&interpret)
        .arg(&raw)
        .arg(&interpreted)
        .status()
        .context("running heaptrack_interpret")?;
    if !status.success() {
        bail!("heaptrack_interpret failed: {status}");
    }
    let folded = b.work.join(format!("heaptrack-{name}.folded"));
    let out = Command::new("heaptrack_print")
        .arg("--file")
        .arg(&interpreted)
        .args(["--print-peaks=0", "--print-allocators=0", "--print-temporary=0", "--print-leaks=0"])
        .args(["--flamegraph-cost-type", "peak", "--print-flamegraph"])
        .arg(&folded)
        .output()
        .context("running heaptrack_print")?;
    if !out.status.success() {
        bail!("heaptrack_print failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&folded).with_context(|| format!("reading {}", folded.display()))?;
    for f in [&raw, &interpreted] {
        let _ = std::fs::remove_file(f);
    }
    Ok(charge(&text))
}

/// Charges each folded stack (`frame;frame;... bytes`) to its owner.
pub fn charge(folded: &str) -> HeapProfile {
    let mut sums = vec![0_u64; OWNERS.len() + 1];
    let mut total = 0;
    for line in folded.lines() {
        let Some((stack, bytes)) = line.rsplit_once(' ') else { continue };
        let Ok(bytes) = bytes.trim().parse::<u64>() else { continue };
        let owner =
            OWNERS.iter().position(|(_, names)| names.iter().any(|n| stack.contains(n))).unwrap_or(OWNERS.len());
        sums[owner] += bytes;
        total += bytes;
    }
    let mut owners: Vec<(String, u64)> =
        OWNERS.iter().zip(&sums).map(|((name, _), b)| ((*name).to_string(), *b)).collect();
    owners.sort_by_key(|o| std::cmp::Reverse(o.1));
    owners.push(("everything else".into(), sums[OWNERS.len()]));
    HeapProfile { owners, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_charged_to_the_first_owner_they_name() {
        let folded = "main;downsync::app::cache::CacheWriter::apply;downsync::app::cache::text_of;alloc 3000\n\
                      main;downsync::sync::state::StateCache::insert;hyper::x 200\n\
                      main;std::rt::lang_start 50\n\
                      not a line\n";
        let p = charge(folded);
        assert_eq!(p.total, 3250);
        let caches = "watch caches (each cached upstream and downstream object as its JSON text)";
        assert_eq!(p.owners[0], (caches.to_string(), 3000));
        assert_eq!(p.owners[1].1, 200, "the state cache is named before hyper in that stack");
        assert_eq!(p.owners.last(), Some(&("everything else".to_string(), 50)));
    }
}
