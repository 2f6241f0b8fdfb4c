//! The memory cap of one rule call, derived from the memory downsync may use: the container's
//! limit (its cgroup's), else the machine's, so the pod's memory limit is the one number to set.
//!
//! Every worker may be in a rule call at once, so the caps of all of them together are held to
//! half of that memory, the other half left to the watch caches and the queue: a rule that
//! allocates without end then fails its call (`memory`) instead of getting the pod OOM-killed.
//! No crate reads a cgroup's limit without a process table around it (sysinfo), so the two
//! files are read here.

/// The least a call gets, whatever the limit: a Python or JavaScript rule starts with about
/// 20 MiB of its memory already in use (the interpreter's heap snapshot).
pub(crate) const MIN_MEMORY_PER_CALL: usize = 64 << 20;

/// The most a call gets, whatever the limit: no rule over one Kubernetes object (1.5 MiB at
/// most in etcd) needs more.
pub(crate) const MAX_MEMORY_PER_CALL: usize = 1 << 30;

/// A WebAssembly page: a memory grows in these.
const PAGE: usize = 64 << 10;

/// The memory cap of one call for `workers` workers on this machine or in this container.
pub fn memory_per_call(workers: usize) -> usize {
    per_call(available_memory(), workers)
}

/// Half of `available` shared by `workers` calls, between [`MIN_MEMORY_PER_CALL`] and
/// [`MAX_MEMORY_PER_CALL`], in whole pages; the least when nothing is known.
fn per_call(available: Option<u64>, workers: usize) -> usize {
    let Some(available) = available else { return MIN_MEMORY_PER_CALL };
    let share = available / 2 / u64::try_from(workers.max(1)).unwrap_or(u64::MAX);
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    share.clamp(MIN_MEMORY_PER_CALL, MAX_MEMORY_PER_CALL) / PAGE * PAGE
}

/// The memory this process may use: the smaller of its cgroup's limit (v2, then v1) and the
/// machine's memory; None where neither can be read (not Linux).
fn available_memory() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let machine = read("/proc/meminfo").as_deref().and_then(mem_total);
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .as_deref()
        .and_then(cgroup_limit);
    match (limit, machine) {
        (Some(l), Some(m)) => Some(l.min(m)),
        (l, m) => l.or(m),
    }
}

/// A cgroup's memory limit file: bytes, or `max` (v2) for none. v1 writes a number near
/// 2^63 for none, which the machine's memory then undercuts.
fn cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn half_the_memory_is_shared_by_the_workers_between_the_bounds() {
        for (available, workers, want) in [
            (Some(4096 * MIB), 8, 256 << 20),
            (Some(2048 * MIB), 4, 256 << 20),
            (Some(256 * MIB), 8, MIN_MEMORY_PER_CALL),
            (Some(24 * 1024 * MIB), 8, MAX_MEMORY_PER_CALL),
            (Some(4096 * MIB), 0, MAX_MEMORY_PER_CALL),
            (Some(3000 * MIB + 12345), 3, 500 << 20),
            (None, 8, MIN_MEMORY_PER_CALL),
        ] {
            let got = per_call(available, workers);
            assert_eq!(got, want, "{available:?} for {workers} workers");
            assert_eq!(got % PAGE, 0, "whole pages");
        }
    }

    #[test]
    fn a_cgroup_limit_is_bytes_and_max_is_none() {
        assert_eq!(cgroup_limit("268435456\n"), Some(256 * MIB));
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), Some(9_223_372_036_854_771_712));
    }

    #[test]
    fn the_machine_memory_is_memtotal() {
        let meminfo = "MemTotal:       24683772 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_683_772 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_gives_a_cap_within_the_bounds() {
        assert!(available_memory().is_some(), "/proc/meminfo is read");
        let cap = memory_per_call(8);
        assert!((MIN_MEMORY_PER_CALL..=MAX_MEMORY_PER_CALL).contains(&cap), "{cap}");
    }
}
