//! The sync workers: each takes keys from the queue, [`reconcile`]s them, and hands failures to
//! [`error_policy`]; a worker that panics is replaced and its key goes back to the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use tracing::Instrument;
use tracing::{debug, error, info, warn};

use super::context::{Controller, lock};
use super::error_policy::{ReconcileError, Step, error_policy, event_reason};
use super::keys::WorkKey;
use super::reconcile::{Action, reconcile};

impl Controller {
    /// Runs the configured number of workers, starting a new one whenever one ends before
    /// shutdown (a worker survives panics in a reconcile, but not, say, a panic in its own
    /// bookkeeping).
    pub(super) async fn supervise_workers(self: Arc<Self>) {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.config.workers {
            workers.spawn(Arc::clone(&self).work());
        }
        while let Some(ended) = workers.join_next().await {
            if self.queue.is_shut_down() {
                continue;
            }
            if let Err(e) = ended {
                error!(error = %e, "a sync worker died; starting another");
                self.metrics.worker_panicked();
            }
            workers.spawn(Arc::clone(&self).work());
        }
    }

    async fn work(self: Arc<Self>) {
        self.workers_alive.fetch_add(1, Ordering::AcqRel);
        let _alive = AliveGuard(Arc::clone(&self.workers_alive));
        while let Some(key) = self.queue.next().await {
            self.metrics.busy(self.kind(&key), 1);
            // One span per reconcile, as kube-runtime's controller opens: every line of it names
            // the object.
            let span = tracing::info_span!("reconcile", kind = self.kind(&key), object = ?key);
            let outcome = std::panic::AssertUnwindSafe(reconcile(&key, &self)).catch_unwind().instrument(span).await;
            let ok = match outcome {
                Ok(Ok(action)) => {
                    self.succeeded(&key, action);
                    true
                }
                Ok(Err(e)) => {
                    self.failed(&key, &e).await;
                    false
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    error!(kind = self.kind(&key), key = ?key, panic = %why, "a sync panicked; queued again");
                    self.metrics.worker_panicked();
                    self.queue.add_rate_limited(key.clone());
                    false
                }
            };
            self.metrics.busy(self.kind(&key), -1);
            self.queue.done(&key);
            self.initial_done_with(&key, ok);
            self.metrics.set_queue_depth(self.queue.len());
        }
    }

    fn succeeded(&self, key: &WorkKey, action: Action) {
        self.queue.forget(key);
        if lock(&self.last_failure).remove(key).is_some() {
            info!(kind = self.kind(key), key = ?key, "synced again after failures");
        }
        if let Action::After(d) = action {
            self.queue.add_after(key.clone(), d);
        }
    }

    async fn failed(&self, key: &WorkKey, e: &ReconcileError) {
        let step = error_policy(e, self.queue.failures(key));
        let reason = event_reason(e);
        let message = e.to_string();
        let first_line = message.lines().next().unwrap_or_default().to_string();
        let state = format!("{reason}: {first_line}");
        let changed = lock(&self.last_failure).insert(key.clone(), state.clone()).as_ref() != Some(&state);
        let kind = self.kind(key);
        self.metrics.failed(kind, reason);
        if changed {
            warn!(kind, key = ?key, reason, ?step, error = %first_line, "sync failed");
            if let Some(up) = self.upstream_object(key) {
                let w = match key {
                    WorkKey::Object(k) => self.watched(k.resource),
                    WorkKey::Namespace { .. } => None,
                };
                if let Some(w) = w
                    && let Err(err) = self.upstream.warn(&w.up_ar, &up.meta, reason, message.clone()).await
                {
                    warn!(kind, key = ?key, reason, error = %err, "cannot publish an Event on the upstream object");
                }
            }
        } else {
            debug!(kind, key = ?key, reason, ?step, error = %first_line, "sync failed again");
        }
        match step {
            Step::Retry => {
                self.metrics.retried(kind);
                let delay = self.queue.add_rate_limited(key.clone());
                debug!(kind, key = ?key, delay_ms = delay.as_millis() as u64, "retrying");
            }
            Step::RetryAfter(d) => {
                self.metrics.retried(kind);
                self.queue.forget(key);
                self.queue.add_after(key.clone(), d);
            }
            Step::Park => self.queue.forget(key),
        }
    }
}

/// Counts a worker out when it ends, however it ends.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
