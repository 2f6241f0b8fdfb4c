//! How a watch that lost its API server tries again: quickly, and never more than a few seconds
//! apart, so that once the server answers again the watches resume within seconds.
//!
//! kube-runtime's default backoff doubles from 0.8 s up to 30 s: after an outage of a minute or
//! more, the next try could come 30 s after the server was back (users saw 48 s). A watch retry
//! is one LIST or WATCH request per kind and side, cheap for an API server that is down anyway,
//! so the pause is capped at [`LONGEST`] (up to twice that with jitter), and it starts over after
//! two minutes without a failure, as the default does.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};

/// The first pause after a failure.
pub const FIRST: Duration = Duration::from_millis(250);
/// The longest pause before jitter.
pub const LONGEST: Duration = Duration::from_secs(3);
/// Time without a failure after which the pauses start over.
const RESET_AFTER: Duration = Duration::from_secs(120);

/// An exponential backoff from [`FIRST`] to [`LONGEST`], with jitter, that never gives up.
pub struct Reconnect {
    builder: ExponentialBuilder,
    current: backon::ExponentialBackoff,
}

impl Reconnect {
    fn new() -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(FIRST)
            .with_max_delay(LONGEST)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { current: builder.build(), builder }
    }
}

impl Iterator for Reconnect {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl Backoff for Reconnect {
    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// The backoff of every watch of both sides.
pub fn backoff() -> ResetTimerBackoff<Reconnect> {
    ResetTimerBackoff::new(Reconnect::new(), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_from_a_quarter_second_and_never_pass_a_few_seconds() {
        let mut b = Reconnect::new();
        let pauses: Vec<Duration> = (0..200).map_while(|_| b.next()).collect();
        assert_eq!(pauses.len(), 200, "it never gives up");
        assert!(pauses[0] >= FIRST && pauses[0] <= FIRST * 2, "{:?}", pauses[0]);
        assert!(pauses.iter().all(|p| *p <= LONGEST * 2), "capped: {:?}", pauses.iter().max());
        assert!(pauses[20..].iter().all(|p| *p >= LONGEST), "it reaches the cap: {:?}", &pauses[20..25]);
        b.reset();
        assert!(b.next().is_some_and(|p| p <= FIRST * 2), "starts over after a reset");
    }
}
