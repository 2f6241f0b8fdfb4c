//! What a failed reconcile asks of the queue, and the Event reason it is reported under: a
//! plain function of the error, so that every class is decided in one table.

use std::time::Duration;

use crate::sync::error::ApiError;
use crate::sync::{RuleError, SyncError};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Syncing or deleting the object downstream failed.
    #[error(transparent)]
    Sync(SyncError),
    /// The object cannot be placed downstream (its namespace cannot be mapped).
    #[error("{0}")]
    Placement(String),
    /// The downstream namespace cannot be created or read.
    #[error("downstream namespace {namespace}: {source}")]
    Namespace {
        /// The downstream namespace.
        namespace: String,
        /// What the API said.
        #[source]
        source: ApiError,
    },
    /// The upstream cluster refused a read or write (finalizer, status, read-back).
    #[error("upstream {operation}: {message}")]
    Upstream {
        /// What was being done.
        operation: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// What the queue does with a key whose reconcile failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try again after the per-key exponential backoff.
    Retry,
    /// Try again after this long (the server asked for it).
    RetryAfter(Duration),
    /// The same input will fail the same way: wait for the next change of the object, of the
    /// rules, or the periodic resync.
    Park,
}

/// Calls of a rule that ended at the deadline for one object, in a row, after which the object
/// is parked: a rule that spins on it burns a core for the whole deadline at each retry, and
/// the next change of the object, of the rules, or the periodic resync tries again.
pub const DEADLINES_BEFORE_PARKING: u32 = 3;

/// Decides what happens to a key whose reconcile failed; `failures` is how many times in a row
/// it failed before this one.
pub fn error_policy(error: &ReconcileError, failures: u32) -> Step {
    match error {
        ReconcileError::Sync(SyncError::Rule(RuleError { retryable: true, .. }))
            if failures + 1 >= DEADLINES_BEFORE_PARKING =>
        {
            Step::Park
        }
        ReconcileError::Sync(e) => sync_policy(e),
        ReconcileError::Placement(_) => Step::Park,
        ReconcileError::Namespace { source, .. } => api_policy(source),
        ReconcileError::Upstream { .. } => Step::Retry,
    }
}

fn sync_policy(e: &SyncError) -> Step {
    match e {
        SyncError::InvalidObject { .. } | SyncError::Preservation(_) | SyncError::Immutable { .. } => Step::Park,
        SyncError::Rule(RuleError { retryable, .. }) => {
            if *retryable {
                Step::Retry
            } else {
                Step::Park
            }
        }
        // Another writer keeps changing it back: wait out the guard's pause.
        SyncError::WriteLoop { wait, .. } => Step::RetryAfter((*wait).max(Duration::from_secs(1))),
        // Server-side apply: other managers hold fields; they may let go.
        SyncError::FieldConflict { .. } => Step::Retry,
        // Someone else's object holds the name; it may go away, so look again, slowly.
        SyncError::NotOwned { .. } | SyncError::Conflict { .. } | SyncError::RecreateTimeout { .. } => Step::Retry,
        // Another object holds the port or IP asked for; it may let go.
        SyncError::Allocated { .. } => Step::Retry,
        SyncError::Api { source, .. } => api_policy(source),
    }
}

fn api_policy(e: &ApiError) -> Step {
    match e {
        // The API refused the object itself (invalid, malformed, too large for the request):
        // the same bytes cannot succeed.
        ApiError::Invalid { .. } | ApiError::Other { code: 400 | 413, .. } => Step::Park,
        ApiError::Unavailable { retry_after_seconds: Some(s), .. } => {
            Step::RetryAfter(Duration::from_secs(u64::from(*s).max(1)))
        }
        _ => Step::Retry,
    }
}

/// The reason of the Warning Event that reports `error` on the upstream object.
pub fn event_reason(error: &ReconcileError) -> &'static str {
    match error {
        ReconcileError::Sync(e) => match e {
            SyncError::InvalidObject { .. } | SyncError::Preservation(_) => "InvalidObject",
            SyncError::Api { source: ApiError::Invalid { .. }, .. } => "InvalidObject",
            SyncError::Immutable { .. } => "ImmutableFieldChanged",
            SyncError::NotOwned { .. } => "NameConflict",
            SyncError::Allocated { .. } => "AlreadyAllocated",
            SyncError::WriteLoop { .. } => "WriteLoop",
            SyncError::FieldConflict { .. } => "FieldConflict",
            SyncError::Rule(_) => "RuleFailed",
            _ => "SyncFailed",
        },
        ReconcileError::Placement(_) => "InvalidObject",
        ReconcileError::Namespace { .. } => "NamespaceFailed",
        ReconcileError::Upstream { .. } => "UpstreamFailed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_api(source: ApiError) -> ReconcileError {
        ReconcileError::Sync(SyncError::Api { object: "ConfigMap a/b".into(), operation: "update", source })
    }

    fn mk_rule(retryable: bool) -> ReconcileError {
        ReconcileError::Sync(SyncError::Rule(RuleError {
            rule: "p".into(),
            object: "ConfigMap a/b".into(),
            message: "trap".into(),
            retryable,
        }))
    }

    fn mk_sync(e: SyncError) -> ReconcileError {
        ReconcileError::Sync(e)
    }

    #[test]
    fn every_error_class_has_one_step_and_one_reason() {
        let unavailable = |retry| ApiError::Unavailable { code: 503, message: "x".into(), retry_after_seconds: retry };
        let invalid = || ApiError::Invalid { message: "bad".into(), causes: vec![] };
        let table: Vec<(ReconcileError, Step, &str)> = vec![
            (
                mk_sync(SyncError::InvalidObject { object: "o".into(), field: "f".into(), message: "m".into() }),
                Step::Park,
                "InvalidObject",
            ),
            (
                mk_sync(SyncError::Immutable { object: "o".into(), fields: vec![], reason: "r".into() }),
                Step::Park,
                "ImmutableFieldChanged",
            ),
            (mk_sync(SyncError::NotOwned { object: "o".into(), owner: "x".into() }), Step::Retry, "NameConflict"),
            (
                mk_sync(SyncError::Conflict { object: "o".into(), attempts: 9, paths: vec![], last: "l".into() }),
                Step::Retry,
                "SyncFailed",
            ),
            (
                mk_sync(SyncError::Allocated {
                    object: "Service a/b".into(),
                    field: "/spec/ports/0/nodePort".into(),
                    value: "30080".into(),
                }),
                Step::Retry,
                "AlreadyAllocated",
            ),
            (
                mk_sync(SyncError::WriteLoop {
                    object: "Deployment a/b".into(),
                    fields: "/spec/replicas by flipper (Update)".into(),
                    wait: Duration::from_secs(30),
                }),
                Step::RetryAfter(Duration::from_secs(30)),
                "WriteLoop",
            ),
            (
                mk_sync(SyncError::FieldConflict { object: "Deployment a/b".into(), fields: "/spec/replicas".into() }),
                Step::Retry,
                "FieldConflict",
            ),
            (mk_rule(false), Step::Park, "RuleFailed"),
            (mk_rule(true), Step::Retry, "RuleFailed"),
            (mk_api(invalid()), Step::Park, "InvalidObject"),
            (mk_api(ApiError::NotFound), Step::Retry, "SyncFailed"),
            (mk_api(unavailable(None)), Step::Retry, "SyncFailed"),
            (mk_api(unavailable(Some(7))), Step::RetryAfter(Duration::from_secs(7)), "SyncFailed"),
            (mk_api(ApiError::Transport("reset".into())), Step::Retry, "SyncFailed"),
            (
                mk_api(ApiError::Other { code: 413, reason: "RequestEntityTooLarge".into(), message: "big".into() }),
                Step::Park,
                "SyncFailed",
            ),
            (
                mk_api(ApiError::Other { code: 403, reason: "Forbidden".into(), message: "rbac".into() }),
                Step::Retry,
                "SyncFailed",
            ),
            (ReconcileError::Placement("namespace too long".into()), Step::Park, "InvalidObject"),
            (
                ReconcileError::Namespace { namespace: "n".into(), source: ApiError::Transport("x".into()) },
                Step::Retry,
                "NamespaceFailed",
            ),
            (ReconcileError::Namespace { namespace: "n".into(), source: invalid() }, Step::Park, "NamespaceFailed"),
            (ReconcileError::Upstream { operation: "finalizer", message: "m".into() }, Step::Retry, "UpstreamFailed"),
        ];
        for (error, step, reason) in table {
            assert_eq!(error_policy(&error, 0), step, "{error}");
            assert_eq!(event_reason(&error), reason, "{error}");
        }
    }

    #[test]
    fn an_object_whose_rule_keeps_running_to_the_deadline_is_parked_after_a_few_tries() {
        let steps: Vec<Step> = (0..4).map(|failures| error_policy(&mk_rule(true), failures)).collect();
        assert_eq!(steps, [Step::Retry, Step::Retry, Step::Park, Step::Park]);
        assert_eq!(error_policy(&mk_api(ApiError::Transport("x".into())), 10), Step::Retry, "only rule deadlines");
    }
}
