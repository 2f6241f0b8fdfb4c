//! Overrun objects: the objects whose latest call of a plugin ended at the wall-clock deadline, whose further calls run one at a time.
//!
//! A call that spins until its deadline burns a core for the whole deadline, and it is retried.
//! With several such objects retried at once, a plugin can hold every core and slow the kinds
//! it does not even handle (measured: a Secret change's p99 rose from 19 to 59 ms on 2 cores
//! with 6 spinning calls at once). Calls for an object that overran wait their turn behind one
//! another, so a runaway plugin costs at most one core; calls for its other objects are not
//! held up. An object leaves the set when a call for it ends in time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many overrun objects a plugin remembers; past that, the set starts again (the
/// objects still overrunning come back on their next call).
const MAX_REMEMBERED: usize = 4096;

/// The overrun objects of one plugin version, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct Overruns {
    objects: Mutex<HashSet<String>>,
    /// The set's size, kept beside it so that calls of a plugin with no overrun object (the
    /// usual case) pass without taking the lock.
    len: AtomicUsize,
    turn: Mutex<()>,
}

impl Overruns {
    /// Waits for the turn when `object`'s latest call overran; the guard ends the turn.
    pub(crate) fn turn(&self, object: &str) -> Option<MutexGuard<'_, ()>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let overran = self.objects.lock().unwrap_or_else(PoisonError::into_inner).contains(object);
        overran.then(|| self.turn.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records how `object`'s call ended: `overran` when at the deadline.
    pub(crate) fn record(&self, object: &str, overran: bool) {
        if !overran && self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        if overran {
            if objects.len() >= MAX_REMEMBERED && !objects.contains(object) {
                objects.clear();
            }
            objects.insert(object.to_string());
        } else if !objects.is_empty() {
            objects.remove(object);
        }
        self.len.store(objects.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Overruns;

    #[test]
    fn only_an_object_that_overran_waits_for_a_turn_until_a_call_ends_in_time() {
        let o = Overruns::default();
        assert!(o.turn("ns/a").is_none());
        o.record("ns/a", true);
        assert!(o.turn("ns/b").is_none(), "other objects are not held up");
        assert!(o.turn("ns/a").is_some());
        o.record("ns/a", false);
        assert!(o.turn("ns/a").is_none());
    }

    #[test]
    fn overrun_calls_run_one_at_a_time() {
        let o = Arc::new(Overruns::default());
        for i in 0..4 {
            o.record(&format!("ns/{i}"), true);
        }
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (o, running, most) = (Arc::clone(&o), Arc::clone(&running), Arc::clone(&most));
                std::thread::spawn(move || {
                    let _turn = o.turn(&format!("ns/{i}"));
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_set_is_bounded() {
        let o = Overruns::default();
        for i in 0..=super::MAX_REMEMBERED {
            o.record(&format!("ns/{i}"), true);
        }
        assert!(o.objects.lock().expect("lock").len() <= super::MAX_REMEMBERED);
        assert!(o.turn(&format!("ns/{}", super::MAX_REMEMBERED)).is_some(), "the latest is remembered");
    }
}
