//! Thread CPU priorities: the plugin work that must not compete with syncing (background
//! compiles, calls of a rule that keeps spinning to its deadline) runs below it.
//!
//! On Linux a priority belongs to a thread, so lowering one thread's leaves every other thread
//! of downsync at nice 0. An unprivileged thread cannot raise its priority again, so only
//! threads that do nothing else are lowered. Elsewhere this does nothing.

/// Nice value of the background compiler: below syncing, above nothing else of downsync's.
pub(crate) const BACKGROUND: i32 = 10;

/// Nice value of a call whose object's latest call ran to the deadline: the lowest there is,
/// so a runaway rule gets only the CPU that syncing and the API servers leave.
pub(crate) const RUNAWAY: i32 = 19;

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

/// Runs `call` (the call of an object whose latest call ran to the deadline, so likely spins
/// again) on a thread of its own at the lowest CPU priority: it then takes only the CPU that
/// syncing, `/healthz` and the API servers leave, and still ends at its wall-clock deadline.
/// A thread of its own because an unprivileged thread cannot raise its priority again; a
/// thread start is some tens of microseconds, against a call that took a whole deadline. When
/// no thread can be started, `call` runs here; `plugin` names it in that log line.
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
            lower_this_thread(RUNAWAY, "test");
            nice_of_this_thread()
        })
        .join()
        .ok();
        assert_eq!(lowered, Some(RUNAWAY));
        assert_eq!(nice_of_this_thread(), before, "the spawning thread keeps its priority");
    }
}
