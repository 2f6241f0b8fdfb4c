//! The plugin work that must not compete with syncing runs below it: Cranelift's background
//! compile of a new version (syncing already runs it on Winch's code), and the calls of a rule
//! that keeps spinning to its deadline on an object, which also run one at a time, so a
//! runaway rule holds at most one core however many of its objects spin.
//!
//! On Linux a priority belongs to a thread, so lowering one thread's leaves every other thread
//! of downsync at nice 0. An unprivileged thread cannot raise its priority again, so only
//! threads that do nothing else are lowered. Elsewhere this does nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Nice value of the background compiler: the lowest there is, so that the compile of a new
/// version gets only the CPU that the re-sync to it and the changes meanwhile leave.
pub(crate) const BACKGROUND: i32 = 19;

/// Nice value of a call whose object's latest call ran to the deadline: the lowest there is,
/// so a runaway rule gets only the CPU that syncing and the API servers leave.
pub(crate) const RUNAWAY: i32 = 19;

/// How many runaway objects a plugin version remembers; past that, the set starts again (the
/// objects still spinning come back at their next call).
const MAX_REMEMBERED: usize = 4096;

/// The objects whose latest call of one plugin version ran to the deadline, shared by its
/// clones. Their calls run one at a time ([`Runaways::turn`]), each on a thread of its own at
/// [`RUNAWAY`]; an object leaves the set when a call for it ends in time, and calls for the
/// plugin's other objects are not held up.
#[derive(Debug, Default)]
pub(crate) struct Runaways {
    objects: Mutex<HashSet<String>>,
    /// The set's size beside it, so that the calls of a plugin with no runaway object (the
    /// usual case) pass without taking the lock.
    len: AtomicUsize,
    turn: Mutex<()>,
}

impl Runaways {
    /// Whether `object`'s latest call ran to the deadline.
    pub(crate) fn contains(&self, object: &str) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.lock().contains(object)
    }

    /// Waits for the runaway calls' turn; the guard ends it.
    pub(crate) fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records how `object`'s call ended: `overran` when at the deadline.
    pub(crate) fn record(&self, object: &str, overran: bool) {
        if !overran && self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut objects = self.lock();
        if overran {
            if objects.len() >= MAX_REMEMBERED && !objects.contains(object) {
                objects.clear();
            }
            objects.insert(object.to_string());
        } else {
            objects.remove(object);
        }
        self.len.store(objects.len(), Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `call` (the call of an object whose latest call ran to the deadline, so likely spins
/// again) on a thread of its own at [`RUNAWAY`]: it then takes only the CPU that syncing,
/// `/healthz` and the API servers leave, and still ends at its wall-clock deadline. A thread
/// of its own because an unprivileged thread cannot raise its priority again; starting one is
/// some tens of microseconds, against a call that took a whole deadline. When no thread can be
/// started, `call` runs here; `plugin` names it in that log line.
pub(crate) fn on_runaway_thread<T: Send>(plugin: &str, call: impl Fn() -> T + Sync) -> T {
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().name("downsync-runaway".into()).spawn_scoped(scope, || {
            let _entered = span.enter();
            lower_this_thread(RUNAWAY, "runaway call");
            call()
        });
        match spawned {
            Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                tracing::debug!(error = %e, plugin = %plugin, "cannot start a thread for a runaway call; calling here");
                call()
            }
        }
    })
}

/// Lowers the calling thread's CPU priority to `nice`; `what` names the thread in the log line
/// written when that is refused.
pub(crate) fn lower_this_thread(nice: i32, what: &str) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers and touches no memory of ours; who = 0 is
        // the calling thread.
        #[allow(unsafe_code)]
        let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0;
        if failed {
            tracing::debug!(error = %std::io::Error::last_os_error(), thread = what, "cannot lower the thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, what);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as above; getpriority returns the nice value (-1 is also a valid one, and
        // errno is not checked because the calling thread always exists).
        #[allow(unsafe_code)]
        unsafe {
            libc::getpriority(libc::PRIO_PROCESS, 0)
        }
    }

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(|| {
            lower_this_thread(BACKGROUND, "test");
            nice_of_this_thread()
        })
        .join()
        .ok();
        assert_eq!(lowered, Some(BACKGROUND));
        assert_eq!(nice_of_this_thread(), before, "the spawning thread keeps its priority");
    }

    #[test]
    fn a_runaway_call_runs_lowered_and_the_caller_keeps_its_priority() {
        let before = nice_of_this_thread();
        assert_eq!(on_runaway_thread("p", nice_of_this_thread), RUNAWAY);
        assert_eq!(nice_of_this_thread(), before);
    }

    #[test]
    fn an_object_is_a_runaway_from_a_call_at_the_deadline_until_one_ends_in_time() {
        let r = Runaways::default();
        assert!(!r.contains("ns/a"));
        r.record("ns/a", true);
        assert!(r.contains("ns/a"));
        assert!(!r.contains("ns/b"), "only the object that overran");
        r.record("ns/a", false);
        assert!(!r.contains("ns/a"));
    }

    #[test]
    fn the_runaway_set_is_bounded_and_keeps_the_latest() {
        let r = Runaways::default();
        for i in 0..=MAX_REMEMBERED {
            r.record(&format!("ns/{i}"), true);
        }
        assert!(r.lock().len() <= MAX_REMEMBERED);
        assert!(r.contains(&format!("ns/{MAX_REMEMBERED}")));
    }

    #[test]
    fn runaway_calls_take_turns() {
        let r = std::sync::Arc::new(Runaways::default());
        let (running, most) = (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (r, running, most) = (r.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    let _turn = r.turn();
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
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
}
