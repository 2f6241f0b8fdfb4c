//! Watching the plugins folder: a background thread woken by folder events (at once for a
//! finished write or a rename, after a quiet period otherwise), by trial verdicts and by a
//! slow resync timer, that re-scans through the [`Reloader`].

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::Watcher;

use super::error::{Error, Result};
use super::reload::Reloader;
use super::rollout::Waker;

/// How the folder is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Quiet time after the last event before re-scanning, for events that may be the middle of
    /// a change (data written, a file removed). A finished write or a rename does not wait.
    pub debounce: Duration,
    /// Re-scan this often even without events (a missed event is not fatal).
    pub resync: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self { debounce: Duration::from_millis(200), resync: Duration::from_secs(30) }
    }
}

impl Reloader {
    /// Scans once now, then watches the folder on a background thread until the handle is dropped.
    pub fn watch(self: &Arc<Self>, config: WatchConfig) -> Result<WatchHandle> {
        let watch_err = |e: notify::Error| Error::Watch { path: self.dir.clone(), message: e.to_string() };
        let (tx, rx) = channel::<Wake>();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) => {
                if let Some(wake) = wake_for(&e.kind) {
                    let _ = events.send(wake);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "plugin folder watch error; re-scanning");
                let _ = events.send(Wake::Changed);
            }
        })
        .map_err(watch_err)?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive).map_err(watch_err)?;
        {
            let tx = Mutex::new(tx.clone());
            let waker: Waker = Arc::new(move || {
                let _ = tx.lock().unwrap_or_else(PoisonError::into_inner).send(Wake::Rollout);
            });
            *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
        }
        self.scan()?;
        let me = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("downsync-plugin-reload".into())
            .spawn(move || me.run(&rx, &config))
            .map_err(|e| Error::Watch {
                path: self.dir.clone(),
                message: format!("cannot start the reload thread: {e}"),
            })?;
        Ok(WatchHandle { watcher: Some(watcher), stop: tx, thread: Some(thread) })
    }

    fn run(&self, rx: &Receiver<Wake>, config: &WatchConfig) {
        let mut next_scan = std::time::Instant::now() + config.resync;
        loop {
            // A trial window that closes by time is acted on when it closes, not at the next resync.
            let now = std::time::Instant::now();
            let until = self.next_deadline().map_or(next_scan, |d| d.min(next_scan));
            let scan = match rx.recv_timeout(until.saturating_duration_since(now)) {
                Ok(Wake::Changed) => loop {
                    match rx.recv_timeout(config.debounce) {
                        Ok(Wake::Changed | Wake::Rollout) => continue,
                        Ok(Wake::Settled) | Err(RecvTimeoutError::Timeout) => break true,
                        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                },
                Ok(Wake::Settled) => true,
                Ok(Wake::Rollout) => false,
                Err(RecvTimeoutError::Timeout) => std::time::Instant::now() >= next_scan,
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            };
            if scan {
                next_scan = std::time::Instant::now() + config.resync;
                if let Err(e) = self.scan() {
                    tracing::error!(dir = %self.dir.display(), error = %e, "cannot scan the plugin folder");
                }
            } else {
                self.evaluate();
            }
        }
    }
}

/// What a folder event asks of the reload thread, if anything.
fn wake_for(kind: &notify::EventKind) -> Option<Wake> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    match kind {
        // A writer closed the file: its bytes are complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Wake::Settled),
        // A scan opens and reads every file (inotify reports that as access): re-scanning on our
        // own reads would loop.
        EventKind::Access(_) => None,
        // Something arrived under its final name: a temp file renamed over a plugin, or the
        // kubelet's `..data_tmp` renamed to `..data`. A name moving away (`From`) is a removal.
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(Wake::Settled),
        _ => Some(Wake::Changed),
    }
}

/// What wakes the reload thread.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// Something in the folder changed and more may follow: re-scan once it is quiet.
    Changed,
    /// A change in the folder is complete: re-scan now.
    Settled,
    /// A trial may have a verdict.
    Rollout,
    /// The handle was dropped.
    Stop,
}

/// Keeps the watch running; dropping it stops the watcher and joins the reload thread.
#[derive(Debug)]
pub struct WatchHandle {
    watcher: Option<notify::RecommendedWatcher>,
    stop: Sender<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.watcher.take();
        // The watcher's own sender may outlive it (notify drops its handler on its own thread),
        // so the thread is told to stop rather than left to notice a closed channel. A scan in
        // progress finishes first.
        let _ = self.stop.send(Wake::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind, RenameMode,
    };

    use super::{Wake, wake_for};

    #[test]
    fn finished_writes_and_arrivals_wake_at_once_partial_changes_wait_and_reads_do_not_wake() {
        let cases = [
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), Some(Wake::Settled)),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), Some(Wake::Settled)),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), Some(Wake::Settled)),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), Some(Wake::Changed)),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), Some(Wake::Changed)),
            (EventKind::Create(CreateKind::File), Some(Wake::Changed)),
            (EventKind::Remove(RemoveKind::File), Some(Wake::Changed)),
            (EventKind::Any, Some(Wake::Changed)),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), None),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), None),
        ];
        for (kind, want) in cases {
            assert_eq!(wake_for(&kind), want, "{kind:?}");
        }
    }
}
