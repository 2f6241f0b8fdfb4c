//! What the update path does when a write does not simply go through: a drift settled by a
//! server-side dry run, a 409 (another manager's fields, a stale resourceVersion), a 422
//! (immutable fields), and the recreate the rules or the policy ask for.

use std::time::Duration;

use serde_json::Value;
use tracing::{debug, info, warn};

use super::config::ImmutablePolicy;
use super::desired::str_at;
use super::differ::delta;
use super::drift::{self, DriftAction, DriftPolicy, DriftedField};
use super::error::{ApiError, Cause, SyncError};
use super::managers;
use super::preservation::{self};
use super::rules::Rules;
use super::types::{DownstreamKey, Operation, SyncResult};
use super::write_loop::Verdict;

use super::causes::{field_to_pointer, immutable_fields};
use super::syncer::{Downstream, Job, Settled, Syncer, api_error, stored_content};
use super::write::Write;

impl<D: Downstream, R: Rules> Syncer<D, R> {
    /// Settles a [`Plan::Settle`]: the cheap compare says the write would change the object,
    /// but the desired object did not change since downsync's last write. Either the
    /// downstream server changes what downsync sends (mutating admission, defaulting: a
    /// list gains an element, a field appears), which is not a difference, or someone changed
    /// a field downsync enforces: a drift. A server-side dry run of the write tells which,
    /// since it answers with what the server would store. It costs one extra API call per
    /// change of the downstream object that the compare cannot settle (two when the object is
    /// first read for its managedFields), and none when nothing moved downstream.
    pub(super) async fn settle(
        &self,
        job: &Job<'_, R::Set>,
        existing: &Value,
        object: Value,
        mut held: Vec<String>,
        policy: &DriftPolicy,
        result: &mut SyncResult,
    ) -> Result<Settled, SyncError> {
        let key = job.key;
        if let Some((wait, fields)) = self.loops().paused(key, &job.hash, tokio::time::Instant::now()) {
            // Paused by the write-loop guard: not even a dry run until the pause ends.
            result.retry_after = Some(wait);
            return Err(SyncError::WriteLoop { object: key.to_string(), fields, wait });
        }
        result.dry_runs += 1;
        let would_store = match self.downstream.dry_run(key, &self.write(existing, object.clone(), &held)).await {
            Ok(stored) => stored,
            // A conflict with other field managers is the write path's to handle and report;
            // a stale resourceVersion, the write path's to retry.
            Err(ApiError::Conflict { .. }) => {
                let changed = Vec::new();
                return Ok(Settled::Write { object, changed, held });
            }
            Err(source) => return Err(api_error(key, "dry-run update", source)),
        };
        let moved = delta(&stored_content(existing), &stored_content(&would_store));
        if moved.is_empty() {
            // Only what the server adds: the live object is what downsync's write gives.
            debug!(object = %key, kind = %key.kind, "settled by a dry run: no difference");
            self.record(key, existing, &job.hash);
            return Ok(Settled::Done(Operation::Unchanged));
        }
        let live = if existing.pointer("/metadata/managedFields").is_some() {
            existing.clone()
        } else {
            // Who changed it is in managedFields, which the watch cache drops.
            self.get(key).await?.unwrap_or_else(|| existing.clone())
        };
        let fields = drift::classify(&moved.paths, &managers::managers(&live), &self.own_managers(), policy);
        let reverted: Vec<&DriftedField> = fields.iter().filter(|f| f.action == DriftAction::Revert).collect();
        let described = drift::describe(&fields);
        info!(object = %key, kind = %key.kind, fields = %described, "drifted downstream");
        if reverted.is_empty() {
            // Left as it is: the downstream values become the baseline.
            result.drift = fields.into_iter().filter(|f| f.action == DriftAction::Report).collect();
            self.record(key, existing, &job.hash);
            return Ok(Settled::Done(Operation::Unchanged));
        }
        let verdict = self.loops().check(key, &job.hash, tokio::time::Instant::now());
        if let Verdict::Paused { wait, engaged, writes } = verdict {
            let fields = drift::describe(&reverted.into_iter().cloned().collect::<Vec<_>>());
            if engaged {
                warn!(object = %key, kind = %key.kind, writes, wait_s = wait.as_secs(), fields = %fields, "write loop: paused");
                self.loops().note(key, fields.clone());
            }
            result.retry_after = Some(wait);
            return Err(SyncError::WriteLoop { object: key.to_string(), fields, wait });
        }
        self.loops().wrote(key, &job.hash, tokio::time::Instant::now());
        let mut object = object;
        for f in fields.iter().filter(|f| f.action != DriftAction::Revert) {
            if let Some(v) = existing.pointer(&f.path) {
                let _ = crate::sync::pointer::set(&mut object, &f.path, v.clone());
            }
            held.push(f.path.clone());
        }
        let changed = reverted.iter().map(|f| f.path.clone()).collect();
        result.drift = fields.into_iter().filter(|f| f.action != DriftAction::Keep).collect();
        Ok(Settled::Write { object, changed, held })
    }

    /// After a server-side apply refused because other field managers own fields downsync
    /// applies with other values: applies the rest of the object, so one contested field never
    /// blocks the others, and reports the contested fields, which are retried with backoff.
    pub(super) async fn after_manager_conflict(
        &self,
        job: &Job<'_, R::Set>,
        write: Write,
        message: &str,
        causes: &[Cause],
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let key = job.key;
        let Write::Apply { mut object, field_manager, force } = write else {
            return Err(api_error(
                key,
                "apply",
                ApiError::Conflict { message: message.to_string(), causes: causes.to_vec() },
            ));
        };
        let mut contested = Vec::new();
        for c in causes {
            let path = field_to_pointer(&c.field);
            crate::sync::pointer::remove(&mut object, &path);
            contested.push(format!("{path} ({})", c.message.trim()));
            result.conflicts.push(path);
        }
        let rest = Write::Apply { object, field_manager, force };
        result.attempts += 1;
        match self.downstream.update(key, &rest).await {
            Ok(updated) => {
                info!(object = %key, kind = %key.kind, fields = ?result.conflicts, "applied all but the contested fields");
                // Recorded as not settled: the contested fields are still to be written.
                self.record(key, &updated, &format!("{}!contested", job.hash));
            }
            Err(source) => return Err(api_error(key, "apply", source)),
        }
        Err(SyncError::FieldConflict { object: key.to_string(), fields: contested.join(", ") })
    }

    /// After a 409: notes the paths in conflict (the API's, or else the ones we changed), gives
    /// up once the attempts are spent, and otherwise backs off and returns a fresh read.
    pub(super) async fn after_conflict(
        &self,
        key: &DownstreamKey,
        message: String,
        causes: &[Cause],
        changed: Vec<String>,
        result: &mut SyncResult,
    ) -> Result<Value, SyncError> {
        let mut paths: Vec<String> = causes.iter().map(|c| field_to_pointer(&c.field)).collect();
        if paths.is_empty() {
            paths = changed;
        }
        for p in paths {
            if !result.conflicts.contains(&p) {
                result.conflicts.push(p);
            }
        }
        if result.attempts > self.config.conflict_retries {
            return Err(SyncError::Conflict {
                object: key.to_string(),
                attempts: result.attempts,
                paths: result.conflicts.clone(),
                last: message,
            });
        }
        tokio::time::sleep(self.backoff(result.attempts)).await;
        match self.get(key).await? {
            Some(live) => Ok(live),
            None => Err(api_error(key, "update", ApiError::NotFound)),
        }
    }

    /// After a 422: a refusal of immutable fields this update changes follows the configured
    /// policy; any other is the API's verdict on the object and is returned as it is.
    pub(super) async fn after_invalid(
        &self,
        job: &Job<'_, R::Set>,
        existing: &Value,
        message: String,
        causes: Vec<Cause>,
        changed: &[String],
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let key = job.key;
        // A taken port or IP is not an immutable field: recreating would lose the object.
        if super::causes::already_allocated(&causes).is_some() {
            return Err(api_error(key, "update", ApiError::Invalid { message, causes }));
        }
        let Some(fields) = immutable_fields(&causes, changed) else {
            return Err(api_error(key, "update", ApiError::Invalid { message, causes }));
        };
        match self.config.on_immutable {
            ImmutablePolicy::Recreate => {
                info!(object = %key, kind = %key.kind, ?fields, "immutable fields changed; recreating");
                self.recreate(job, existing, result).await
            }
            ImmutablePolicy::Skip => Err(SyncError::Immutable { object: key.to_string(), fields, reason: message }),
        }
    }

    /// Deletes the live object (UID precondition), waits until it is gone, and creates the
    /// desired one.
    pub(super) async fn recreate(
        &self,
        job: &Job<'_, R::Set>,
        existing: &Value,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let key = job.key;
        let uid = str_at(existing, "/metadata/uid").unwrap_or_default();
        result.attempts += 1;
        match self.downstream.delete(key, uid, self.config.propagation).await {
            Ok(()) | Err(ApiError::NotFound) => {}
            Err(source) => return Err(api_error(key, "delete", source)),
        }
        let started = tokio::time::Instant::now();
        loop {
            match self.get(key).await? {
                None => break,
                Some(o) if str_at(&o, "/metadata/uid") != Some(uid) => break,
                Some(_) if started.elapsed() >= self.config.recreate_timeout => {
                    return Err(SyncError::RecreateTimeout {
                        object: key.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut obj = job.object.clone();
        preservation::stamp_managed_keys(&mut obj);
        result.attempts += 1;
        let created = self.downstream.create(key, &obj).await.map_err(|source| api_error(key, "create", source))?;
        self.log_write(key, "recreated");
        self.record(key, &created, &job.hash);
        Ok(Operation::Recreated)
    }
}
