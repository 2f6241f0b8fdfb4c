//! The write-loop guard: an object that downsync writes again and again with no upstream change
//! (another writer keeps changing it back) stops being written, with a growing pause.
//!
//! Counted are writes of one object with the same desired hash (so neither the upstream object
//! nor its rules changed). The sixth such write within a minute is refused and the object is
//! paused for 30 s; after a pause one write is let through, and if another is needed within the
//! minute the pause doubles, up to 15 minutes. A new desired hash (an upstream change, a rule
//! change) starts over.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::types::DownstreamKey;

/// Writes of the same desired object within [`WINDOW`] before the guard engages.
pub const MAX_WRITES: usize = 5;
/// The window writes are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The first pause.
pub const FIRST_PAUSE: Duration = Duration::from_secs(30);
/// The longest pause.
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// The guard's state: one track per object that was written with an unchanged desired hash.
#[derive(Debug, Default)]
pub struct LoopGuard {
    tracks: HashMap<DownstreamKey, Track>,
}

#[derive(Debug)]
struct Track {
    hash: String,
    writes: VecDeque<Instant>,
    /// Pauses so far; after the first, one write in a window engages the guard again.
    strikes: u32,
    paused_until: Option<Instant>,
    /// What the guard engaged on, for the reports while it stays paused.
    why: String,
}

/// What the guard says about one more write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write.
    Write,
    /// Do not write; look again after this long. `engaged` is true when the guard engaged
    /// just now (report it), false while an earlier pause runs.
    Paused {
        /// How long until a write may go again.
        wait: Duration,
        /// Whether this call engaged the guard.
        engaged: bool,
        /// Writes counted in the window that engaged it.
        writes: usize,
    },
}

impl LoopGuard {
    /// Whether downsync may write `key` once more for the unchanged desired `hash` now.
    pub fn check(&mut self, key: &DownstreamKey, hash: &str, now: Instant) -> Verdict {
        let track = self.tracks.entry(key.clone()).or_insert_with(|| Track::new(hash));
        if track.hash != hash {
            *track = Track::new(hash);
        }
        if let Some(until) = track.paused_until
            && until > now
        {
            return Verdict::Paused { wait: until - now, engaged: false, writes: 0 };
        }
        while track.writes.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            track.writes.pop_front();
        }
        let limit = if track.strikes == 0 { MAX_WRITES } else { 1 };
        if track.writes.len() < limit {
            return Verdict::Write;
        }
        let writes = track.writes.len();
        let pause = FIRST_PAUSE.saturating_mul(1 << track.strikes.min(10)).min(MAX_PAUSE);
        track.strikes += 1;
        track.writes.clear();
        track.paused_until = Some(now + pause);
        Verdict::Paused { wait: pause, engaged: true, writes }
    }

    /// While a pause runs for `key` at the unchanged desired `hash`: how long it still runs and
    /// what it engaged on ([`LoopGuard::note`]). Asked before any API call is made for it.
    pub fn paused(&self, key: &DownstreamKey, hash: &str, now: Instant) -> Option<(Duration, String)> {
        let track = self.tracks.get(key).filter(|t| t.hash == hash)?;
        let until = track.paused_until.filter(|u| *u > now)?;
        Some((until - now, track.why.clone()))
    }

    /// Notes what the guard engaged on for `key` (the fields and who changes them).
    pub fn note(&mut self, key: &DownstreamKey, why: String) {
        if let Some(t) = self.tracks.get_mut(key) {
            t.why = why;
        }
    }

    /// Notes a write of `key` for the unchanged desired `hash`.
    pub fn wrote(&mut self, key: &DownstreamKey, hash: &str, now: Instant) {
        let track = self.tracks.entry(key.clone()).or_insert_with(|| Track::new(hash));
        if track.hash != hash {
            *track = Track::new(hash);
        }
        track.writes.push_back(now);
    }

    /// Forgets `key`: its desired object changed, or it is gone.
    pub fn forget(&mut self, key: &DownstreamKey) {
        self.tracks.remove(key);
    }
}

impl Track {
    fn new(hash: &str) -> Self {
        Self { hash: hash.to_string(), writes: VecDeque::new(), strikes: 0, paused_until: None, why: String::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::types::{Gvr, Resource};

    fn mk_key() -> DownstreamKey {
        let r = Resource {
            gvr: Gvr { group: "apps".into(), version: "v1".into(), resource: "deployments".into() },
            kind: "Deployment".into(),
            namespaced: true,
        };
        DownstreamKey::new(&r, Some("ns"), "web")
    }

    /// Drives a writer that flips the object every `every` for `total`, and downsync writing
    /// back each time the guard lets it; returns the times of downsync's writes.
    fn flip(guard: &mut LoopGuard, start: Instant, every: Duration, total: Duration) -> Vec<Duration> {
        let key = mk_key();
        let mut writes = Vec::new();
        let mut t = Duration::ZERO;
        while t < total {
            if guard.check(&key, "h", start + t) == Verdict::Write {
                guard.wrote(&key, "h", start + t);
                writes.push(t);
            }
            t += every;
        }
        writes
    }

    #[test]
    fn a_writer_flipping_every_second_is_written_back_five_times_then_rarely() {
        let mut guard = LoopGuard::default();
        let writes = flip(&mut guard, Instant::now(), Duration::from_secs(1), Duration::from_secs(600));
        assert_eq!(&writes[..5], &[0, 1, 2, 3, 4].map(Duration::from_secs));
        // Paused 30 s after the fifth, then one write per pause, each pause twice the last.
        assert_eq!(writes[5], Duration::from_secs(35));
        assert_eq!(writes[6], Duration::from_secs(36 + 60));
        assert_eq!(writes[7], Duration::from_secs(97 + 120));
        let after_first_minute = writes.iter().filter(|t| **t >= Duration::from_secs(60)).count();
        assert!(after_first_minute <= 9, "at most one write per minute after engaging: {writes:?}");
    }

    #[test]
    fn the_engaging_call_says_so_once_and_a_new_hash_starts_over() {
        let mut guard = LoopGuard::default();
        let key = mk_key();
        let t0 = Instant::now();
        for _ in 0..MAX_WRITES {
            assert_eq!(guard.check(&key, "h", t0), Verdict::Write);
            guard.wrote(&key, "h", t0);
        }
        assert_eq!(guard.check(&key, "h", t0), Verdict::Paused { wait: FIRST_PAUSE, engaged: true, writes: 5 });
        guard.note(&key, "/data/v by flipper".into());
        assert!(matches!(guard.check(&key, "h", t0), Verdict::Paused { engaged: false, .. }));
        assert_eq!(guard.paused(&key, "h", t0), Some((FIRST_PAUSE, "/data/v by flipper".to_string())));
        assert_eq!(guard.paused(&key, "h", t0 + FIRST_PAUSE), None, "the pause ended");
        assert_eq!(guard.check(&key, "h2", t0), Verdict::Write, "upstream changed: write at once");
    }

    #[test]
    fn writes_spread_over_more_than_a_minute_never_engage_it() {
        let mut guard = LoopGuard::default();
        let writes = flip(&mut guard, Instant::now(), Duration::from_secs(13), Duration::from_secs(600));
        assert_eq!(writes.len(), 47, "every flip is written back");
    }
}
