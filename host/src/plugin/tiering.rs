//! Tiered code: a component not in the artifact cache runs Winch's code at once, and Cranelift's once a background thread has compiled it.
//!
//! Cranelift makes fast code slowly: a whole component took 240-370 ms (p50) to compile on a
//! busy 2-core machine, and a rule change waited for it. Winch, wasmtime's baseline compiler,
//! compiles in one pass, several times faster, into slower code. A new version is put in use
//! with Winch's code; Cranelift's replaces it in the same [`Code`] when ready. Every clone of
//! the plugin holds that `Code`, so the replacement is not a new version: nothing is re-synced,
//! and the fingerprint stays the same. Fuel is counted nearly alike by both compilers: Winch
//! follows Cranelift's cost per operator, though not to the unit (measured: 70,296 against
//! 70,747 for one call), so only an object within about a percent of the fuel budget could
//! get another verdict from the other code.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Engine;

use super::dispatch::RulePre;

/// Which compiler made the code a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch's: compiled quickly, while Cranelift compiles in the background.
    Baseline,
    /// Cranelift's, compiled now or taken from the artifact cache.
    Optimized,
}

/// Code ready to instantiate, and the engine it belongs to (a store must come from it).
pub(crate) struct Compiled {
    pub(crate) engine: Engine,
    pub(crate) pre: RulePre,
    pub(crate) tier: Tier,
}

/// The code of one plugin version, shared by its clones; replaced once, by optimized code.
pub(crate) struct Code {
    state: Mutex<State>,
    settled: Condvar,
    /// The background compile of Cranelift's code, held until the version is accepted (a
    /// version refused at load, by its fixtures or by the other plugins is never compiled).
    pending: Mutex<Option<Job>>,
}

struct State {
    current: Arc<Compiled>,
    /// Set when the optimized compile failed: the baseline code stays for good.
    failed: bool,
}

impl Code {
    pub(crate) fn new(compiled: Compiled) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State { current: Arc::new(compiled), failed: false }),
            settled: Condvar::new(),
            pending: Mutex::new(None),
        })
    }

    /// Holds the background compile until [`Code::take_pending`].
    pub(crate) fn defer(&self, job: Job) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
    }

    /// The background compile, once: None when there is none or it was taken.
    pub(crate) fn take_pending(&self) -> Option<Job> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The code to run now. Calls in flight keep the code they started with.
    pub(crate) fn current(&self) -> Arc<Compiled> {
        Arc::clone(&self.state.lock().unwrap_or_else(PoisonError::into_inner).current)
    }

    /// Puts optimized code in use in place of baseline code.
    pub(crate) fn install(&self, compiled: Compiled) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.current.tier == Tier::Baseline && compiled.tier == Tier::Optimized {
            state.current = Arc::new(compiled);
            self.settled.notify_all();
        }
    }

    /// Records that no optimized code will come.
    pub(crate) fn fail(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).failed = true;
        self.settled.notify_all();
    }

    /// Waits up to `timeout` for optimized code; whether it is in use. Returns at once when
    /// its compile failed.
    pub(crate) fn wait_optimized(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.current.tier != Tier::Optimized && !state.failed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.settled.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        state.current.tier == Tier::Optimized
    }
}

/// A job for the background compiler.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// One background thread, started on the first job, that runs jobs in order at a low CPU
/// priority: the optimized compile of a new version must not slow the syncing of changes,
/// which already has the baseline code. It ends when this is dropped.
#[derive(Default)]
pub(crate) struct Background {
    jobs: Mutex<Option<Sender<Job>>>,
}

impl Background {
    /// Queues `job`; runs it at once on this thread if the background thread cannot start.
    pub(crate) fn submit(&self, job: Job) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match jobs.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The thread is gone: start another.
                Err(returned) => returned.0,
            },
            None => job,
        };
        let (tx, rx) = channel();
        let job = match std::thread::Builder::new().name("downsync-compile".into()).spawn(move || run(&rx)) {
            Ok(_) => match tx.send(job) {
                Ok(()) => {
                    *jobs = Some(tx);
                    return;
                }
                Err(returned) => returned.0,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the background compiler; compiling in the foreground");
                job
            }
        };
        // Not under the lock: other submitters need not wait for this compile.
        drop(jobs);
        job();
    }
}

fn run(rx: &Receiver<Job>) {
    super::priority::lower_this_thread(super::priority::BACKGROUND, "background compiler");
    while let Ok(job) = rx.recv() {
        // A job that panics loses its own result only; the thread serves the next.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a background compile panicked; that plugin keeps its baseline code");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn background_jobs_run_in_order_on_one_thread() {
        let background = Background::default();
        let (done, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        for i in 0..5 {
            let (done, seen) = (Arc::clone(&done), Arc::clone(&seen));
            background.submit(Box::new(move || {
                seen.lock().expect("lock").push((i, std::thread::current().name().map(str::to_string)));
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        drop(background);
        let until = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < 5 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert!(seen.iter().all(|(_, name)| name.as_deref() == Some("downsync-compile")), "{seen:?}");
    }
}
