//! Timing helpers: interleaved batches with a median, percentiles, and durations as text.

use std::time::{Duration, Instant};

/// Per-call time of each closure: a warm-up, then `batches` rounds in which every closure runs
/// one batch in turn (so machine noise hits all of them alike); the median batch of each.
///
/// A batch is sized so that it lasts about `batch` for that closure.
pub fn interleaved(fs: &mut [&mut dyn FnMut()], batches: usize, batch: Duration) -> Vec<Duration> {
    let sizes: Vec<u32> = fs
        .iter_mut()
        .map(|f| {
            let started = Instant::now();
            let mut n: u32 = 0;
            while n < 20 || started.elapsed() < batch / 2 {
                f();
                n += 1;
            }
            let per_call = started.elapsed().as_nanos() / u128::from(n);
            u32::try_from(batch.as_nanos() / per_call.max(1)).unwrap_or(u32::MAX).clamp(1, 1_000_000)
        })
        .collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(batches); fs.len()];
    for _ in 0..batches.max(1) {
        for (i, f) in fs.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..sizes[i] {
                f();
            }
            samples[i].push(started.elapsed() / sizes[i]);
        }
    }
    samples.into_iter().map(|mut s| median(&mut s)).collect()
}

/// The median (the lower middle for an even count); zero when empty.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

/// The nearest-rank percentile `p` (0..=100) of the samples; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Microseconds with two decimals.
pub fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

/// `a / b` with two decimals, or "n/a" when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() { "n/a".to_string() } else { format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(20));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn median_of_an_even_count_is_the_lower_middle() {
        let mut v =
            vec![Duration::from_secs(4), Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(2)];
        assert_eq!(median(&mut v), Duration::from_secs(2));
    }

    #[test]
    fn ratio_guards_against_zero() {
        assert_eq!(ratio(Duration::from_secs(3), Duration::from_secs(2)), "1.50×");
        assert_eq!(ratio(Duration::from_secs(3), Duration::ZERO), "n/a");
    }
}
