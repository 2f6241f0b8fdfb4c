//! The pace of bulk re-syncs: the least time between two of them starting, which follows load.
//!
//! A fixed rate that keeps ordinary changes fast on one machine loads a slower machine, or a
//! busier API server, past what those changes can bear (docs/benchmarks.md, the hot-reload
//! section, measured both). So the pace watches the changes themselves: how long an ordinary
//! key is held by its worker, with no re-sync running (the quiet mean) and while re-syncs run
//! (the loaded mean). While the loaded mean is above [`CONGESTED`] times the quiet one the
//! interval doubles, one step per new observation; otherwise it shortens by an eighth at each
//! re-sync, back to the fastest. TCP's congestion control, with the changes' latency as the
//! signal. Without ordinary changes there is nothing to protect, and the pace stays at its
//! fastest.

use std::time::Duration;

/// Ordinary changes held this many times longer than with no re-sync running are congested.
pub const CONGESTED: f64 = 1.2;

/// Weight of a new observation in the quiet mean: small, so the baseline follows the machine,
/// not a blip.
const QUIET_WEIGHT: f64 = 0.05;

/// Weight of a new observation in the loaded mean: large enough to see a re-sync's load within a
/// few dozen changes (under a second at 50 a second), small enough that the noise of single
/// changes does not read as congestion.
const LOADED_WEIGHT: f64 = 1.0 / 16.0;

/// The bounds of the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaceLimits {
    /// The least interval, kept while ordinary changes are not slowed. Zero: unpaced, and the
    /// pace does not follow load either.
    pub fastest: Duration,
    /// The greatest interval, however slow ordinary changes get: it bounds the time to
    /// re-sync everything. Taken as `fastest` when shorter.
    pub slowest: Duration,
}

impl PaceLimits {
    /// A pace that does not follow load: always `interval`.
    pub fn fixed(interval: Duration) -> Self {
        Self { fastest: interval, slowest: interval }
    }
}

/// The adaptive pace. Plain state, updated by the queue under its lock.
#[derive(Debug, Clone)]
pub struct Pace {
    limits: PaceLimits,
    interval: Duration,
    /// Mean seconds an ordinary key was held with no re-sync queued or running.
    quiet: Option<f64>,
    /// Mean seconds an ordinary key was held while re-syncs were queued or running, since the
    /// last quiet observation.
    loaded: Option<f64>,
    /// Whether an ordinary key was held under load since the last [`Pace::step`].
    fresh: bool,
}

impl Pace {
    /// A pace at its fastest.
    pub fn new(limits: PaceLimits) -> Self {
        let limits = PaceLimits { slowest: limits.slowest.max(limits.fastest), ..limits };
        Self { limits, interval: limits.fastest, quiet: None, loaded: None, fresh: false }
    }

    /// The interval now.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// An ordinary key was held for `held`; `resyncing`: while re-syncs were queued or running.
    pub fn observe(&mut self, held: Duration, resyncing: bool) {
        let seconds = held.as_secs_f64();
        if resyncing {
            self.loaded = Some(mean(self.loaded.or(self.quiet), seconds, LOADED_WEIGHT));
            self.fresh = true;
        } else {
            self.quiet = Some(mean(self.quiet, seconds, QUIET_WEIGHT));
            self.loaded = None;
        }
    }

    /// Whether ordinary changes are slowed by the re-syncs, on what was observed so far.
    pub fn congested(&self) -> bool {
        matches!((self.quiet, self.loaded), (Some(q), Some(l)) if l > q * CONGESTED)
    }

    /// The interval before the next re-sync, called as one starts: doubled if changes held
    /// since the last step find the re-syncs congesting them, an eighth shorter otherwise.
    pub fn step(&mut self) -> Duration {
        let PaceLimits { fastest, slowest } = self.limits;
        if fastest.is_zero() {
            return Duration::ZERO;
        }
        let fresh = std::mem::take(&mut self.fresh);
        self.interval = match (self.congested(), fresh) {
            (true, true) => self.interval.saturating_mul(2).min(slowest),
            // No new evidence: hold, so that one old reading does not double it again and again.
            (true, false) => self.interval,
            (false, _) => (self.interval - self.interval / 8).max(fastest),
        };
        self.interval
    }
}

/// An exponentially weighted moving mean.
fn mean(previous: Option<f64>, x: f64, weight: f64) -> f64 {
    previous.map_or(x, |m| m + weight * (x - m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn mk_pace(fastest_ms: u32, slowest_ms: u32) -> Pace {
        Pace::new(PaceLimits { fastest: MS * fastest_ms, slowest: MS * slowest_ms })
    }

    /// Observes `n` ordinary keys held `ms` each.
    fn mk_changes(p: &mut Pace, n: usize, ms: u32, resyncing: bool) {
        for _ in 0..n {
            p.observe(MS * ms, resyncing);
        }
    }

    #[test]
    fn it_stays_at_its_fastest_while_changes_are_as_quick_as_without_re_syncs() {
        let mut p = mk_pace(5, 100);
        mk_changes(&mut p, 20, 10, false);
        for _ in 0..10 {
            mk_changes(&mut p, 1, 11, true);
            assert_eq!(p.step(), MS * 5, "1.1 times the quiet time is not congestion");
        }
    }

    #[test]
    fn it_doubles_while_changes_are_slowed_and_stops_at_its_slowest() {
        let mut p = mk_pace(5, 100);
        mk_changes(&mut p, 20, 10, false);
        let steps: Vec<_> = (0..7)
            .map(|_| {
                mk_changes(&mut p, 5, 40, true);
                p.step().as_millis()
            })
            .collect();
        assert_eq!(steps, [10, 20, 40, 80, 100, 100, 100]);
    }

    #[test]
    fn without_a_new_change_it_holds_rather_than_doubling_on_an_old_reading() {
        let mut p = mk_pace(5, 1000);
        mk_changes(&mut p, 20, 10, false);
        mk_changes(&mut p, 10, 40, true);
        assert_eq!(p.step(), MS * 10);
        assert_eq!(p.step(), MS * 10, "no change held since: no new evidence");
        assert_eq!(p.step(), MS * 10);
    }

    #[test]
    fn it_recovers_by_an_eighth_per_re_sync_once_changes_are_quick_again() {
        let mut p = mk_pace(5, 100);
        mk_changes(&mut p, 20, 10, false);
        while p.step() < MS * 100 {
            mk_changes(&mut p, 5, 40, true);
        }
        // The loaded mean comes down as quick changes are seen; then every re-sync shortens it.
        mk_changes(&mut p, 60, 10, true);
        assert!(!p.congested());
        let steps: Vec<_> = (0..4).map(|_| p.step().as_micros()).collect();
        assert_eq!(steps, [87_500, 76_562, 66_992, 58_618]);
        let mut n = 0;
        while p.step() > MS * 5 {
            n += 1;
        }
        assert_eq!(n, 18, "back to the fastest within a few dozen re-syncs");
    }

    #[test]
    fn with_no_ordinary_changes_at_all_it_stays_at_its_fastest() {
        let mut p = mk_pace(5, 100);
        assert_eq!(p.step(), MS * 5);
        mk_changes(&mut p, 3, 500, true);
        assert_eq!(p.step(), MS * 5, "no quiet baseline to compare with: nothing to judge by");
    }

    #[test]
    fn a_quiet_change_ends_the_loaded_reading_so_the_next_re_sync_wave_starts_afresh() {
        let mut p = mk_pace(5, 100);
        mk_changes(&mut p, 20, 10, false);
        mk_changes(&mut p, 5, 40, true);
        assert!(p.congested());
        mk_changes(&mut p, 1, 10, false);
        assert!(!p.congested(), "re-syncs over: the old reading goes");
        mk_changes(&mut p, 1, 30, true);
        assert!(!p.congested(), "one slow change in a new wave starts from the quiet mean, not from 30 ms");
    }

    #[test]
    fn unpaced_stays_unpaced_and_a_slowest_below_the_fastest_is_the_fastest() {
        let mut p = mk_pace(0, 100);
        mk_changes(&mut p, 20, 10, false);
        mk_changes(&mut p, 20, 90, true);
        assert_eq!(p.step(), Duration::ZERO);

        let mut p = mk_pace(20, 5);
        mk_changes(&mut p, 20, 10, false);
        mk_changes(&mut p, 20, 90, true);
        assert_eq!(p.step(), MS * 20, "a fixed pace");
        assert_eq!(Pace::new(PaceLimits::fixed(MS * 7)).step(), MS * 7);
    }
}
