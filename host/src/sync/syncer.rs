//! The syncer: applies one desired object to downstream, or deletes one, through the
//! [`Downstream`] trait. Create, update with conflicts retried, immutable fields, ownership.
//!
//! An apply reads top-down: `apply_inner` normalises, checks and hashes the desired object and
//! takes the fast path; `create_if_absent` is the create path; `update` is the update path,
//! where `plan_update` decides what to write and `after_conflict` / `after_invalid` handle the
//! API's 409s and 422s. The pure pieces live in `desired.rs`, `write.rs` and `causes.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::{debug, info};

use super::config::{DownstreamConfig, Propagation, UpdateStrategy};
use super::desired::{content_digest, str_at};
use super::differ::{self, DiffOptions};
use super::drift::{DriftAction, DriftPolicy};
use super::error::{ApiError, Cause, SyncError};
use super::intent::{self, Intent};
use super::managers;
use super::ownership;
use super::preservation::{self, PreserveOptions};
use super::rules::{RuleDecision, RuleSet, Rules};
use super::state::{ResourceState, StateCache};
use super::types::{DownstreamKey, Operation, Resource, SyncResult};
use super::write::{write_for, write_holding};
use super::write_loop::LoopGuard;

// Moved to files named for what they hold; re-exported here, where callers found them.
pub use super::causes::{field_to_pointer, immutable_fields};
pub use super::desired::{desired_hash, normalize_desired, object_ref};
pub use super::write::Write;

/// The downstream API as the core needs it. The `kube` edge implements it with a client; the
/// core never sees one.
pub trait Downstream: Send + Sync {
    /// Resolves `apiVersion` + `kind` to a served resource (discovery).
    fn resolve(&self, api_version: &str, kind: &str) -> impl Future<Output = Result<Resource, ApiError>> + Send;
    /// Reads an object; `None` when it does not exist.
    fn get(&self, key: &DownstreamKey) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;
    /// Creates an object.
    fn create(&self, key: &DownstreamKey, obj: &Value) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Updates an object.
    fn update(&self, key: &DownstreamKey, write: &Write) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Sends an update as a server-side dry run (`dryRun=All`): the API runs admission and
    /// defaulting and answers with what it would store, and persists nothing.
    fn dry_run(&self, key: &DownstreamKey, write: &Write) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Deletes an object with a UID precondition. `NotFound` when it is already gone.
    fn delete(
        &self,
        key: &DownstreamKey,
        uid: &str,
        propagation: Propagation,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Whether writes persist: false for a downstream whose every write is a server-side dry
    /// run (`downsync diff`), which changes nothing and so must not be logged as a change.
    fn persists(&self) -> bool {
        true
    }
}

/// Applies desired objects to downstream and deletes them, keeping downstream-owned fields.
pub struct Syncer<D, R> {
    pub(super) downstream: D,
    pub(super) rules: R,
    pub(super) config: DownstreamConfig,
    pub(super) state: StateCache,
    /// The drift policy of each kind, by (group, kind); the default where none is set.
    pub(super) drift: HashMap<(String, String), DriftPolicy>,
    /// Objects written again and again with no upstream change.
    pub(super) loops: Mutex<LoopGuard>,
}

/// One apply past the fast path: what downstream should hold, and the rules it was built with.
pub(super) struct Job<'a, S> {
    pub(super) key: &'a DownstreamKey,
    /// The desired object, transformed by the rules and stamped with ownership and hash.
    pub(super) object: Value,
    /// The desired hash, recorded in the state cache on success.
    pub(super) hash: String,
    /// What a client asked for upstream, for the rules.
    pub(super) intent: Intent,
    /// The one rules snapshot of this apply: a reload half-way must not mix two versions.
    pub(super) rules: S,
    /// Fields of the object that are the downstream's to set: the ones the upstream server
    /// filled in (not in `object`), as JSON pointers. A write keeps their live values; a
    /// server-side apply leaves them out.
    pub(super) server_set: Vec<String>,
    /// The logical cluster of the upstream object, when the upstream serves many kcp
    /// workspaces: the stamp records it, and only a copy stamped for it is ours.
    pub(super) cluster: Option<String>,
}

/// What the create path found.
pub(super) enum Found {
    /// The object was absent and is created now.
    Created,
    /// The object exists: the live version, for the update path.
    Live(Value),
}

/// What one round of the update path will do.
pub(super) enum Plan {
    /// Nothing to write; the apply ends with this operation.
    Done(Operation),
    /// The rules asked for a delete and create.
    Recreate,
    /// Write this object; `changed` are the paths the diff found; `held` the fields whose live
    /// values it carries because they are not downsync's to set.
    Write { object: Value, changed: Vec<String>, held: Vec<String> },
    /// The desired object did not change since downsync's last write, yet writing it would
    /// change the live one: a drift, or only what the server adds at a write. Settled by a
    /// server-side dry run.
    Settle { object: Value, held: Vec<String> },
}

/// What settling a [`Plan::Settle`] found.
pub(super) enum Settled {
    /// Nothing to write.
    Done(Operation),
    /// Write this, as [`Plan::Write`].
    Write { object: Value, changed: Vec<String>, held: Vec<String> },
}

/// Whether a 409 is server-side apply's conflict between field managers (not a stale
/// resourceVersion).
pub(super) fn is_manager_conflict(write: &Write, causes: &[Cause]) -> bool {
    matches!(write, Write::Apply { force: false, .. })
        && !causes.is_empty()
        && causes.iter().all(|c| c.reason == "FieldManagerConflict")
}

/// The part of an object a write can change, for telling what a write would store from what
/// is stored: no status, no server bookkeeping.
pub(super) fn stored_content(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in super::ownership::SERVER_METADATA {
                meta.remove(f);
            }
        }
    }
    out
}

pub(super) fn rv(v: &Value) -> Option<&str> {
    str_at(v, "/metadata/resourceVersion")
}

pub(super) fn api_error(key: &DownstreamKey, operation: &'static str, source: ApiError) -> SyncError {
    if let ApiError::Invalid { causes, .. } = &source
        && let Some(taken) = super::causes::already_allocated(causes)
    {
        return SyncError::Allocated { object: key.to_string(), field: taken.field, value: taken.value };
    }
    SyncError::Api { object: key.to_string(), operation, source }
}

impl<D: Downstream, R: Rules> Syncer<D, R> {
    /// A syncer over a downstream, with rules, configuration and a state cache.
    pub fn new(downstream: D, rules: R, config: DownstreamConfig, state: StateCache) -> Self {
        Self { downstream, rules, config, state, drift: HashMap::new(), loops: Mutex::default() }
    }

    /// Sets the drift policy of each kind, by (group, kind).
    #[must_use]
    pub fn with_drift_policies(mut self, policies: HashMap<(String, String), DriftPolicy>) -> Self {
        self.drift = policies;
        self
    }

    /// Logs a write: a change at info level, or, on a downstream that persists nothing (the
    /// dry run of `downsync diff`), at debug level as what would happen.
    pub(super) fn log_write(&self, key: &DownstreamKey, done: &'static str) {
        if self.downstream.persists() {
            info!(object = %key, kind = %key.kind, "{done}");
        } else {
            debug!(object = %key, kind = %key.kind, "dry run: would be {done}");
        }
    }

    pub(super) fn drift_policy(&self, key: &DownstreamKey) -> DriftPolicy {
        self.drift.get(&(key.gvr.group.clone(), key.kind.clone())).cloned().unwrap_or_default()
    }

    /// downsync's own field managers, never blamed for a drift: the one the API derives from
    /// its user agent for updates, and the server-side apply field manager.
    pub(super) fn own_managers(&self) -> Vec<&str> {
        let mut own = vec!["downsync"];
        if let UpdateStrategy::ServerSideApply { field_manager, .. } = &self.config.strategy {
            own.push(field_manager.as_str());
        }
        own
    }

    pub(super) fn loops(&self) -> std::sync::MutexGuard<'_, LoopGuard> {
        // Single calls on plain maps: a poisoned lock is still consistent.
        self.loops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state cache.
    pub fn state(&self) -> &StateCache {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &DownstreamConfig {
        &self.config
    }

    /// The downstream.
    pub fn downstream(&self) -> &D {
        &self.downstream
    }

    /// The rules.
    pub fn rules(&self) -> &R {
        &self.rules
    }

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.config.backoff_base.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.config.backoff_max);
        cap.mul_f64(rand::random::<f64>())
    }

    pub(super) fn record(&self, key: &DownstreamKey, obj: &Value, hash: &str) {
        self.state.insert(ResourceState {
            key: key.clone(),
            resource_version: rv(obj).unwrap_or_default().to_string(),
            generation: obj.pointer("/metadata/generation").and_then(Value::as_i64),
            uid: str_at(obj, "/metadata/uid").unwrap_or_default().to_string(),
            desired_hash: hash.to_string(),
            content: content_digest(obj),
            last_sync: SystemTime::now(),
        });
    }

    /// Resolves the key of a desired object.
    pub async fn key_of(&self, desired: &Value) -> Result<DownstreamKey, SyncError> {
        let object = object_ref(desired);
        let invalid = |field: &str, message: &str| SyncError::InvalidObject {
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        };
        if !desired.is_object() {
            return Err(invalid("<root>", "is not a JSON object"));
        }
        let api_version = str_at(desired, "/apiVersion").ok_or_else(|| invalid("apiVersion", "is missing"))?;
        let kind = str_at(desired, "/kind").ok_or_else(|| invalid("kind", "is missing"))?;
        let name = str_at(desired, "/metadata/name").filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| invalid("metadata.name", "is missing or empty"))?;
        let resource = self.downstream.resolve(api_version, kind).await.map_err(|source| SyncError::Api {
            object: object.clone(),
            operation: "resolve",
            source,
        })?;
        let ns = str_at(desired, "/metadata/namespace");
        if resource.namespaced && ns.is_none_or(str::is_empty) {
            return Err(invalid("metadata.namespace", "is required for a namespaced kind"));
        }
        Ok(DownstreamKey::new(&resource, ns, name))
    }

    /// Applies one desired object. `cached` is the downstream object from a watch cache, if
    /// the caller has one (`Some(None)`: the cache knows it is absent); otherwise it is read.
    pub async fn apply(&self, desired: Value, cached: Option<Option<Value>>) -> SyncResult {
        let key = match self.key_of(&desired).await {
            Ok(k) => k,
            Err(e) => {
                let mut r = SyncResult::new(None, Operation::Skipped);
                r.error = Some(e);
                return r;
            }
        };
        let mut result = SyncResult::new(Some(key.clone()), Operation::Skipped);
        match self.apply_inner(&key, desired, cached, &mut result).await {
            Ok(op) => result.operation = op,
            Err(e) => {
                if let SyncError::Api { source: ApiError::Unavailable { retry_after_seconds, .. }, .. } = &e {
                    result.retry_after = Some(Duration::from_secs(u64::from(retry_after_seconds.unwrap_or(1))));
                }
                // The caller reports failures (once per change of state); here only the detail.
                debug!(object = %key, kind = %key.kind, error = %e, "sync failed");
                result.error = Some(e);
            }
        }
        debug!(object = %key, operation = result.operation.as_str(), attempts = result.attempts, "applied");
        result
    }

    pub(super) async fn get(&self, key: &DownstreamKey) -> Result<Option<Value>, SyncError> {
        self.downstream.get(key).await.map_err(|source| api_error(key, "get", source))
    }

    /// Normalises, checks and hashes the desired object; returns early when neither it nor the
    /// live object moved since our last write, else runs the rules and the create or update path.
    pub(super) async fn apply_inner(
        &self,
        key: &DownstreamKey,
        desired: Value,
        cached: Option<Option<Value>>,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        // Read before normalising, which drops managedFields.
        let intent = Intent::of(&desired);
        let normalized = normalize_desired(desired);
        // The workspace the placement recorded (many kcp workspaces only), before any rule runs.
        let cluster = ownership::recorded_cluster(&normalized).map(str::to_string);
        preservation::check_size(&normalized)?;
        // One version of the rules for the whole apply: a reload half-way must not mix two.
        let rules = self.rules.snapshot();
        // What downsync enforces follows the intent, so a change of intent is a change.
        let mut fingerprint = rules.fingerprint_for(&key.gvr.group, &key.kind);
        fingerprint.push('|');
        fingerprint.push_str(&intent.digest());
        let hash = desired_hash(&normalized, &fingerprint);

        // Fast path: same desired as last time and the downstream object has not moved since
        // our last write (or moved only in its status and bookkeeping): nothing to do and
        // nothing to ask the API.
        if let Some(Some(live)) = cached.as_ref()
            && let Some(live_rv) = rv(live)
            && !rules.shadowing(&key.gvr.group, &key.kind)
        {
            if self.state.is_current(key, &hash, live_rv, str_at(live, "/metadata/uid").unwrap_or_default()) {
                return Ok(Operation::Unchanged);
            }
            if self.state.is_settled(key, &hash, content_digest(live)) {
                self.state.touch(key, live_rv);
                return Ok(Operation::Unchanged);
            }
        }

        let server_set = match &intent {
            Intent::ServerSet(paths) if !paths.is_empty() => paths.clone(),
            _ => Vec::new(),
        };
        let mut object = if server_set.is_empty() {
            rules.transform(normalized, &intent).await?
        } else {
            let transformed = rules.transform(normalized.clone(), &intent).await?;
            intent::enforced(transformed, &intent, &normalized)
        };
        ownership::stamp(&mut object, &self.config.ownership, cluster.as_deref(), &hash);
        // Only the server-set fields the object no longer carries are the downstream's.
        let server_set = server_set.into_iter().filter(|p| object.pointer(p).is_none()).collect();
        let job = Job { key, object, hash, intent, rules, server_set, cluster };
        match self.create_if_absent(&job, cached, result).await? {
            Found::Created => Ok(Operation::Created),
            Found::Live(existing) => self.update(&job, existing, result).await,
        }
    }

    /// The create path: finds the live object (from the cache, or read) and creates the object
    /// when there is none. A create that loses a race to another writer hands the winner's
    /// object to the update path.
    pub(super) async fn create_if_absent(
        &self,
        job: &Job<'_, R::Set>,
        cached: Option<Option<Value>>,
        result: &mut SyncResult,
    ) -> Result<Found, SyncError> {
        let key = job.key;
        let ssa = matches!(self.config.strategy, UpdateStrategy::ServerSideApply { .. });
        let existing = match cached {
            // Server-side apply creates by applying, which would take over an object that a
            // stale cache missed; so it always confirms absence with a fresh read.
            Some(None) if ssa => self.get(key).await?,
            Some(c) => c,
            None => self.get(key).await?,
        };
        if let Some(live) = existing {
            return Ok(Found::Live(live));
        }
        let mut obj = job.object.clone();
        preservation::stamp_managed_keys(&mut obj);
        result.attempts += 1;
        if ssa {
            let write = write_for(&self.config.strategy, &Value::Null, obj);
            let created =
                self.downstream.update(key, &write).await.map_err(|source| api_error(key, "apply", source))?;
            self.log_write(key, "created by server-side apply");
            self.record(key, &created, &job.hash);
            return Ok(Found::Created);
        }
        match self.downstream.create(key, &obj).await {
            Ok(created) => {
                self.log_write(key, "created");
                self.record(key, &created, &job.hash);
                Ok(Found::Created)
            }
            Err(ApiError::AlreadyExists) => {
                debug!(object = %key, "create raced another writer; updating instead");
                match self.get(key).await? {
                    Some(live) => Ok(Found::Live(live)),
                    None => Err(api_error(key, "get", ApiError::NotFound)),
                }
            }
            Err(source) => Err(api_error(key, "create", source)),
        }
    }

    /// The update path: plans a write over the live object and sends it. A 409 re-reads the
    /// object and plans again, up to the configured retries; a 422 may be an immutable field.
    pub(super) async fn update(
        &self,
        job: &Job<'_, R::Set>,
        mut existing: Value,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let key = job.key;
        let policy = self.drift_policy(key);
        loop {
            if policy.holds_fields() && existing.pointer("/metadata/managedFields").is_none() {
                // The watch cache drops managedFields; which fields the managers this kind's
                // policy leaves alone own is read from the object itself.
                existing = self.get(key).await?.ok_or_else(|| api_error(key, "get", ApiError::NotFound))?;
            }
            let (object, changed, held) = match self.plan_update(job, &existing, &policy, result).await? {
                Plan::Done(op) => return Ok(op),
                Plan::Recreate => return self.recreate(job, &existing, result).await,
                Plan::Write { object, changed, held } => (object, changed, held),
                Plan::Settle { object, held } => {
                    match self.settle(job, &existing, object, held, &policy, result).await? {
                        Settled::Done(op) => return Ok(op),
                        Settled::Write { object, changed, held } => (object, changed, held),
                    }
                }
            };
            debug!(object = %key, changes = changed.len(), "updating");
            let write = self.write(&existing, object, &held);
            result.attempts += 1;
            match self.downstream.update(key, &write).await {
                Ok(updated) => {
                    self.log_write(key, "updated");
                    self.record(key, &updated, &job.hash);
                    return Ok(Operation::Updated);
                }
                Err(ApiError::Conflict { message, causes }) if is_manager_conflict(&write, &causes) => {
                    return self.after_manager_conflict(job, write, &message, &causes, result).await;
                }
                Err(ApiError::Conflict { message, causes }) => {
                    existing = self.after_conflict(key, message, &causes, changed, result).await?;
                }
                Err(ApiError::Invalid { message, causes }) => {
                    return self.after_invalid(job, &existing, message, causes, &changed, result).await;
                }
                Err(source) => return Err(api_error(key, "update", source)),
            }
        }
    }

    /// The write of `object` over `existing`, holding the `held` fields ([`write_holding`]).
    pub(super) fn write(&self, existing: &Value, object: Value, held: &[String]) -> Write {
        write_holding(&self.config.strategy, existing, object, held)
    }

    /// Decides what one round of the update path writes over `existing`: checks ownership and
    /// deletion, applies the built-in preservation, asks the rules, and diffs.
    pub(super) async fn plan_update(
        &self,
        job: &Job<'_, R::Set>,
        existing: &Value,
        policy: &DriftPolicy,
        result: &mut SyncResult,
    ) -> Result<Plan, SyncError> {
        let key = job.key;
        if !ownership::may_write(existing, &self.config.ownership, job.cluster.as_deref()) {
            return Err(SyncError::NotOwned { object: key.to_string(), owner: ownership::describe_owner(existing) });
        }
        if existing.pointer("/metadata/deletionTimestamp").is_some() {
            // Being deleted downstream: writing now would fight the deletion.
            result.retry_after = Some(Duration::from_secs(1));
            return Ok(Plan::Done(Operation::Deleting));
        }
        // Not downsync's to set: what the upstream server filled in, and what the managers this
        // kind's policy leaves alone own downstream.
        let mut held = job.server_set.clone();
        if policy.holds_fields() {
            let own = self.own_managers();
            for m in managers::managers(existing) {
                if !own.contains(&m.name.as_str()) && policy.action_for(&m.name) != DriftAction::Revert {
                    held.extend(m.fields);
                }
            }
        }
        let opts = PreserveOptions { preserve: self.config.preserve_paths.clone() };
        let mut preserved = preservation::preserve(existing, &job.object, &opts)?;
        for path in &held {
            if let Some(live) = existing.pointer(path) {
                // A failure means the desired object has no place for it: nothing to keep it in.
                let _ = crate::sync::pointer::set(&mut preserved, path, live.clone());
            }
        }
        let object = match job.rules.preserve(existing, preserved, &job.intent).await? {
            RuleDecision::Apply(obj) => obj,
            RuleDecision::Recreate(reason) => {
                info!(object = %key, kind = %key.kind, reason = %reason, "rules asked for a recreate");
                return Ok(Plan::Recreate);
            }
            RuleDecision::Skip(reason) => {
                info!(object = %key, kind = %key.kind, reason = %reason, "rules asked to skip");
                result.reason = Some(reason);
                return Ok(Plan::Done(Operation::Skipped));
            }
        };

        let mut ignore = self.config.ignore_paths.clone();
        ignore.extend(job.rules.ignore_paths(&key.gvr.group, &key.kind).await?);
        let diff = differ::diff(existing, &object, &DiffOptions { ignore });
        let stamped = ownership::recorded_hash(existing) == Some(job.hash.as_str());
        if diff.is_empty() && stamped {
            self.record(key, existing, &job.hash);
            return Ok(Plan::Done(Operation::Unchanged));
        }
        // The desired object is the one downsync last wrote (by this process's record, or the
        // stamp on the object after a restart): what differs now changed downstream.
        let unchanged = stamped || self.state.desired_hash(key).as_deref() == Some(job.hash.as_str());
        if unchanged && !diff.is_empty() {
            return Ok(Plan::Settle { object, held });
        }
        self.loops().forget(key);
        let changed = diff.paths().into_iter().map(str::to_string).collect();
        Ok(Plan::Write { object, changed, held })
    }
}
