//! Thread CPU priority of the background compiler: Cranelift's compile of a new version must
//! not compete with syncing, which already runs the version on Winch's code.
//!
//! On Linux a priority belongs to a thread, so lowering one thread's leaves every other thread
//! of downsync at nice 0. An unprivileged thread cannot raise its priority again, so only
//! threads that do nothing else are lowered. Elsewhere this does nothing.

/// Nice value of the background compiler: below syncing, above nothing else of downsync's.
pub(crate) const BACKGROUND: i32 = 10;

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
}
