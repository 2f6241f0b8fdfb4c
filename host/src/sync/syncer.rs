//! The syncer: applies one desired object to downstream, or deletes one, through the
//! [`Downstream`] trait. Create, update with conflicts retried, immutable fields, ownership.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::config::{DownstreamConfig, ImmutablePolicy, Propagation, UpdateStrategy};
use super::differ::{self, DiffOptions};
use super::error::{ApiError, Cause, SyncError};
use super::ownership;
use super::preservation::{self, PreserveOptions};
use super::rules::{RuleDecision, RuleSet, Rules};
use super::state::{ResourceState, StateCache};
use super::types::{ObjectKey, Operation, Resource, SyncResult};

/// How an update is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// PUT the object (it carries its resourceVersion).
    Replace(Value),
    /// JSON merge patch.
    Merge(Value),
    /// Strategic merge patch.
    Strategic(Value),
    /// Server-side apply.
    Apply {
        /// The applied configuration.
        object: Value,
        /// Field manager.
        field_manager: String,
        /// Force ownership of conflicting fields.
        force: bool,
    },
}

/// The downstream API as the core needs it. The `kube` edge implements it with a client; the
/// core never sees one.
pub trait Downstream: Send + Sync {
    /// Resolves `apiVersion` + `kind` to a served resource (discovery).
    fn resolve(&self, api_version: &str, kind: &str) -> impl Future<Output = Result<Resource, ApiError>> + Send;
    /// Reads an object; `None` when it does not exist.
    fn get(&self, key: &ObjectKey) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;
    /// Creates an object.
    fn create(&self, key: &ObjectKey, obj: &Value) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Updates an object.
    fn update(&self, key: &ObjectKey, write: &Write) -> impl Future<Output = Result<Value, ApiError>> + Send;
    /// Deletes an object with a UID precondition. `NotFound` when it is already gone.
    fn delete(
        &self,
        key: &ObjectKey,
        uid: &str,
        propagation: Propagation,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Applies desired objects to downstream and deletes them, keeping downstream-owned fields.
pub struct Syncer<D, R> {
    downstream: D,
    rules: R,
    config: DownstreamConfig,
    state: StateCache,
}

/// Beyond the server-managed fields, these come from the upstream object and mean nothing
/// downstream.
const UPSTREAM_ONLY: &[&str] = &["ownerReferences", "finalizers", "generateName"];

/// Strips what must never travel downstream: upstream-only metadata (ownerReferences point
/// at upstream uids, upstream finalizers have no controller downstream) and status. A Secret's
/// `stringData` is folded into `data`, as the apiserver would, so the differ compares like
/// with like.
pub fn normalize_desired(mut desired: Value) -> Value {
    let is_secret = str_at(&desired, "/kind") == Some("Secret") && str_at(&desired, "/apiVersion") == Some("v1");
    if let Some(obj) = desired.as_object_mut() {
        obj.remove("status");
        if is_secret {
            fold_string_data(obj);
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in ownership::SERVER_METADATA.iter().chain(UPSTREAM_ONLY) {
                meta.remove(*f);
            }
        }
    }
    desired
}

fn fold_string_data(secret: &mut serde_json::Map<String, Value>) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = secret.remove("stringData") else { return };
    let data = secret.entry("data").or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            if let Some(text) = v.as_str() {
                data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
            }
        }
    }
}

/// Hash of a normalised desired object plus the rules' fingerprint. Map keys are hashed in
/// sorted order, so the hash does not depend on the order fields arrived in (serde_json keeps
/// insertion order, which is what keeps its small maps small).
pub fn desired_hash(normalized: &Value, rules_fingerprint: &str) -> String {
    let mut h = Sha256::new();
    feed_canonical(&mut h, normalized);
    h.update([0]);
    h.update(rules_fingerprint.as_bytes());
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn feed_canonical(h: &mut Sha256, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            h.update(b"{");
            for k in keys {
                h.update(Value::from(k.as_str()).to_string().as_bytes());
                h.update(b":");
                if let Some(child) = map.get(k) {
                    feed_canonical(h, child);
                }
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                feed_canonical(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        scalar => h.update(scalar.to_string().as_bytes()),
    }
}

/// `Kind namespace/name` of an object, as far as it has them, for messages.
pub fn object_ref(obj: &Value) -> String {
    let kind = str_at(obj, "/kind").unwrap_or("<no kind>");
    let name = str_at(obj, "/metadata/name").unwrap_or("<no name>");
    match str_at(obj, "/metadata/namespace") {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn rv(v: &Value) -> Option<&str> {
    str_at(v, "/metadata/resourceVersion")
}

/// `spec.ports[0].nodePort` -> `/spec/ports/0/nodePort`.
pub fn field_to_pointer(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        let name_end = rest.find('[').unwrap_or(rest.len());
        out.push('/');
        out.push_str(&super::pointer::escape(&rest[..name_end]));
        rest = &rest[name_end..];
        while let Some(open) = rest.find('[') {
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            out.push('/');
            out.push_str(&super::pointer::escape(rest[open + 1..close].trim_matches('"')));
            rest = rest.get(close + 1..).unwrap_or("");
        }
    }
    out
}

fn related(a: &str, b: &str) -> bool {
    let under = |p: &str, q: &str| p == q || (p.starts_with(q) && p.as_bytes().get(q.len()) == Some(&b'/'));
    under(a, b) || under(b, a)
}

/// The fields of a 422 that are immutable-field refusals: the API named them in its structured
/// causes, and each is a field this update changes. A 422 on fields we did not touch is a
/// plain validation error, not an immutability one.
pub fn immutable_fields(causes: &[Cause], changed: &[String]) -> Option<Vec<String>> {
    if causes.is_empty() {
        return None;
    }
    let fields: Vec<String> = causes.iter().map(|c| field_to_pointer(&c.field)).collect();
    let all_changed = fields.iter().all(|f| !f.is_empty() && changed.iter().any(|c| related(c, f)));
    all_changed.then_some(fields)
}

/// Keys of the maps at `ptrs` that exist in `existing` but not in `write`, as merge-patch nulls.
fn add_removals(patch: &mut Value, existing: &Value, ptrs: &[&str]) {
    for ptr in ptrs {
        let Some(old) = existing.pointer(ptr).and_then(Value::as_object) else { continue };
        let new_keys: Vec<String> =
            patch.pointer(ptr).and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for k in old.keys().filter(|k| !new_keys.contains(k)) {
            let path = format!("{ptr}/{}", super::pointer::escape(k));
            // Creating intermediates cannot fail here: `ptr` is an object path in `existing`.
            let _ = super::pointer::set(patch, &path, Value::Null);
        }
    }
}

/// A patch or applied configuration: status and server-set metadata out, but the
/// resourceVersion stays (when there is one) so that the write is conditional on the object we
/// checked ownership of.
fn strip_for_patch(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in ownership::SERVER_METADATA.iter().filter(|f| **f != "resourceVersion") {
                meta.remove(*f);
            }
        }
    }
    obj
}

impl<D: Downstream, R: Rules> Syncer<D, R> {
    /// A syncer over a downstream, with rules, configuration and a state cache.
    pub fn new(downstream: D, rules: R, config: DownstreamConfig, state: StateCache) -> Self {
        Self { downstream, rules, config, state }
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

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.config.backoff_base.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.config.backoff_max);
        cap.mul_f64(rand::random::<f64>())
    }

    fn record(&self, key: &ObjectKey, obj: &Value, hash: &str) {
        self.state.insert(ResourceState {
            key: key.clone(),
            resource_version: rv(obj).unwrap_or_default().to_string(),
            generation: obj.pointer("/metadata/generation").and_then(Value::as_i64),
            uid: str_at(obj, "/metadata/uid").unwrap_or_default().to_string(),
            desired_hash: hash.to_string(),
            last_sync: SystemTime::now(),
        });
    }

    /// Resolves the key of a desired object.
    pub async fn key_of(&self, desired: &Value) -> Result<ObjectKey, SyncError> {
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
        Ok(ObjectKey::new(&resource, ns, name))
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
                warn!(object = %key, kind = %key.kind, error = %e, "sync failed");
                result.error = Some(e);
            }
        }
        debug!(object = %key, operation = result.operation.as_str(), attempts = result.attempts, "applied");
        result
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, SyncError> {
        self.downstream.get(key).await.map_err(|source| SyncError::Api {
            object: key.to_string(),
            operation: "get",
            source,
        })
    }

    async fn apply_inner(
        &self,
        key: &ObjectKey,
        desired: Value,
        cached: Option<Option<Value>>,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let normalized = normalize_desired(desired);
        preservation::check_size(&normalized)?;
        // One version of the rules for the whole apply: a reload half-way must not mix two.
        let rules = self.rules.snapshot();
        let group = key.gvr.group.as_str();
        let hash = desired_hash(&normalized, &rules.fingerprint_for(group, &key.kind));

        // Fast path: same desired as last time and the downstream object has not moved since
        // our last write: nothing to do and nothing to ask the API.
        if let (Some(state), Some(Some(live))) = (self.state.get(key), cached.as_ref())
            && state.desired_hash == hash
            && rv(live) == Some(state.resource_version.as_str())
        {
            return Ok(Operation::Unchanged);
        }

        let mut transformed = rules.transform(normalized).await?;
        ownership::stamp(&mut transformed, &self.config.ownership, &hash);

        let ssa = matches!(self.config.strategy, UpdateStrategy::ServerSideApply { .. });
        let mut existing = match cached {
            // Server-side apply creates by applying, which would take over an object that a
            // stale cache missed; so it always confirms absence with a fresh read.
            Some(None) if ssa => self.get(key).await?,
            Some(c) => c,
            None => self.get(key).await?,
        };
        if existing.is_none() && ssa {
            let mut obj = transformed.clone();
            preservation::stamp_managed_keys(&mut obj);
            result.attempts += 1;
            let write = self.write_for(&Value::Null, obj);
            let created = self.downstream.update(key, &write).await.map_err(|source| SyncError::Api {
                object: key.to_string(),
                operation: "apply",
                source,
            })?;
            info!(object = %key, kind = %key.kind, "created by server-side apply");
            self.record(key, &created, &hash);
            return Ok(Operation::Created);
        }
        if existing.is_none() {
            let mut obj = transformed.clone();
            preservation::stamp_managed_keys(&mut obj);
            result.attempts += 1;
            match self.downstream.create(key, &obj).await {
                Ok(created) => {
                    info!(object = %key, kind = %key.kind, "created");
                    self.record(key, &created, &hash);
                    return Ok(Operation::Created);
                }
                Err(ApiError::AlreadyExists) => {
                    debug!(object = %key, "create raced another writer; updating instead");
                    existing = self.get(key).await?;
                }
                Err(source) => return Err(SyncError::Api { object: key.to_string(), operation: "create", source }),
            }
        }
        let Some(mut existing) = existing else {
            return Err(SyncError::Api { object: key.to_string(), operation: "get", source: ApiError::NotFound });
        };

        let max_attempts = self.config.conflict_retries + 1;
        loop {
            if !ownership::is_owned(&existing, &self.config.ownership) && !self.config.ownership.adopt {
                return Err(SyncError::NotOwned {
                    object: key.to_string(),
                    owner: ownership::owner_of(&existing).unwrap_or("none").to_string(),
                });
            }
            if existing.pointer("/metadata/deletionTimestamp").is_some() {
                // Being deleted downstream: writing now would fight the deletion.
                result.retry_after = Some(Duration::from_secs(1));
                return Ok(Operation::Deleting);
            }
            let opts = PreserveOptions { preserve: self.config.preserve_paths.clone() };
            let preserved = preservation::preserve(&existing, &transformed, &opts)?;
            let obj = match rules.preserve(&existing, preserved).await? {
                RuleDecision::Apply(obj) => obj,
                RuleDecision::Recreate(reason) => {
                    info!(object = %key, kind = %key.kind, reason = %reason, "rules asked for a recreate");
                    return self.recreate(key, &existing, &transformed, &hash, result).await;
                }
                RuleDecision::Skip(reason) => {
                    info!(object = %key, kind = %key.kind, reason = %reason, "rules asked to skip");
                    result.reason = Some(reason);
                    return Ok(Operation::Skipped);
                }
            };

            let mut ignore = self.config.ignore_paths.clone();
            ignore.extend(rules.ignore_paths(&key.gvr.group, &key.kind).await?);
            let diff = differ::diff(&existing, &obj, &DiffOptions { ignore });
            if diff.is_empty() && ownership::recorded_hash(&existing) == Some(hash.as_str()) {
                self.record(key, &existing, &hash);
                return Ok(Operation::Unchanged);
            }
            let changed: Vec<String> = diff.paths().into_iter().map(str::to_string).collect();
            debug!(object = %key, changes = changed.len(), "updating");

            let write = self.write_for(&existing, obj);
            result.attempts += 1;
            match self.downstream.update(key, &write).await {
                Ok(updated) => {
                    info!(object = %key, kind = %key.kind, attempts = result.attempts, "updated");
                    self.record(key, &updated, &hash);
                    return Ok(Operation::Updated);
                }
                Err(ApiError::Conflict { message, causes }) => {
                    let mut paths: Vec<String> = causes.iter().map(|c| field_to_pointer(&c.field)).collect();
                    if paths.is_empty() {
                        paths = changed;
                    }
                    for p in paths {
                        if !result.conflicts.contains(&p) {
                            result.conflicts.push(p);
                        }
                    }
                    if result.attempts >= max_attempts {
                        return Err(SyncError::Conflict {
                            object: key.to_string(),
                            attempts: result.attempts,
                            paths: result.conflicts.clone(),
                            last: message,
                        });
                    }
                    tokio::time::sleep(self.backoff(result.attempts)).await;
                    existing = match self.get(key).await? {
                        Some(e) => e,
                        None => {
                            return Err(SyncError::Api {
                                object: key.to_string(),
                                operation: "update",
                                source: ApiError::NotFound,
                            });
                        }
                    };
                }
                Err(ApiError::Invalid { message, causes }) => match immutable_fields(&causes, &changed) {
                    Some(fields) => match self.config.on_immutable {
                        ImmutablePolicy::Recreate => {
                            info!(object = %key, kind = %key.kind, ?fields, "immutable fields changed; recreating");
                            return self.recreate(key, &existing, &transformed, &hash, result).await;
                        }
                        ImmutablePolicy::Skip => {
                            return Err(SyncError::Immutable { object: key.to_string(), fields, reason: message });
                        }
                    },
                    None => {
                        return Err(SyncError::Api {
                            object: key.to_string(),
                            operation: "update",
                            source: ApiError::Invalid { message, causes },
                        });
                    }
                },
                Err(source) => return Err(SyncError::Api { object: key.to_string(), operation: "update", source }),
            }
        }
    }

    fn write_for(&self, existing: &Value, obj: Value) -> Write {
        match &self.config.strategy {
            UpdateStrategy::Replace => Write::Replace(obj),
            UpdateStrategy::Merge | UpdateStrategy::StrategicMerge => {
                let mut patch = strip_for_patch(obj);
                add_removals(
                    &mut patch,
                    existing,
                    &["/metadata/labels", "/metadata/annotations", "/data", "/binaryData"],
                );
                if matches!(self.config.strategy, UpdateStrategy::Merge) {
                    Write::Merge(patch)
                } else {
                    Write::Strategic(patch)
                }
            }
            UpdateStrategy::ServerSideApply { field_manager, force } => {
                Write::Apply { object: strip_for_patch(obj), field_manager: field_manager.clone(), force: *force }
            }
        }
    }

    async fn recreate(
        &self,
        key: &ObjectKey,
        existing: &Value,
        transformed: &Value,
        hash: &str,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let uid = str_at(existing, "/metadata/uid").unwrap_or_default();
        result.attempts += 1;
        match self.downstream.delete(key, uid, self.config.propagation).await {
            Ok(()) | Err(ApiError::NotFound) => {}
            Err(source) => return Err(SyncError::Api { object: key.to_string(), operation: "delete", source }),
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
        let mut obj = transformed.clone();
        preservation::stamp_managed_keys(&mut obj);
        result.attempts += 1;
        let created = self.downstream.create(key, &obj).await.map_err(|source| SyncError::Api {
            object: key.to_string(),
            operation: "create",
            source,
        })?;
        info!(object = %key, kind = %key.kind, "recreated");
        self.record(key, &created, hash);
        Ok(Operation::Recreated)
    }

    /// Deletes an object downstream, if downsync owns it. `cached` as in [`Syncer::apply`].
    pub async fn delete(&self, key: &ObjectKey, cached: Option<Option<Value>>) -> SyncResult {
        let mut result = SyncResult::new(Some(key.clone()), Operation::Skipped);
        match self.delete_inner(key, cached, &mut result).await {
            Ok(op) => result.operation = op,
            Err(e) => {
                warn!(object = %key, kind = %key.kind, error = %e, "delete failed");
                result.error = Some(e);
            }
        }
        result
    }

    async fn delete_inner(
        &self,
        key: &ObjectKey,
        cached: Option<Option<Value>>,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let existing = match cached {
            Some(c) => c,
            None => self.get(key).await?,
        };
        let Some(existing) = existing else {
            self.state.remove(key);
            return Ok(Operation::Deleted);
        };
        if !ownership::is_owned(&existing, &self.config.ownership) {
            return Err(SyncError::NotOwned {
                object: key.to_string(),
                owner: ownership::owner_of(&existing).unwrap_or("none").to_string(),
            });
        }
        if existing.pointer("/metadata/deletionTimestamp").is_none() {
            let uid = str_at(&existing, "/metadata/uid").unwrap_or_default();
            result.attempts += 1;
            match self.downstream.delete(key, uid, self.config.propagation).await {
                Ok(()) => {}
                Err(ApiError::NotFound) => {
                    self.state.remove(key);
                    return Ok(Operation::Deleted);
                }
                Err(source) => return Err(SyncError::Api { object: key.to_string(), operation: "delete", source }),
            }
        }
        match self.get(key).await? {
            None => {
                info!(object = %key, kind = %key.kind, "deleted");
                self.state.remove(key);
                Ok(Operation::Deleted)
            }
            Some(o) if str_at(&o, "/metadata/uid") != str_at(&existing, "/metadata/uid") => {
                // Someone else created a new object with the same name: ours is gone.
                self.state.remove(key);
                Ok(Operation::Deleted)
            }
            Some(o) => {
                let finalizers = o.pointer("/metadata/finalizers").cloned().unwrap_or(Value::Array(vec![]));
                info!(object = %key, kind = %key.kind, %finalizers, "deleting; held by finalizers");
                result.retry_after = Some(Duration::from_secs(2));
                Ok(Operation::Deleting)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_cause(field: &str) -> Cause {
        Cause { reason: "FieldValueInvalid".into(), field: field.into(), message: String::new() }
    }

    #[test]
    fn api_field_paths_become_json_pointers() {
        assert_eq!(field_to_pointer("spec.ports[0].nodePort"), "/spec/ports/0/nodePort");
        assert_eq!(field_to_pointer("data"), "/data");
        assert_eq!(field_to_pointer("metadata.annotations[a/b]"), "/metadata/annotations/a~1b");
    }

    #[test]
    fn an_invalid_on_a_changed_field_is_immutability() {
        let changed = vec!["/data/key".to_string()];
        assert_eq!(immutable_fields(&[mk_cause("data")], &changed), Some(vec!["/data".to_string()]));
    }

    #[test]
    fn an_invalid_on_an_untouched_field_is_plain_validation() {
        let changed = vec!["/data/key".to_string()];
        assert_eq!(immutable_fields(&[mk_cause("spec.selector")], &changed), None);
        assert_eq!(immutable_fields(&[], &changed), None, "no causes, no claim");
    }

    #[test]
    fn normalizing_strips_upstream_only_metadata_and_status() {
        let d = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "9", "ownerReferences": [{}], "finalizers": ["x"], "labels": {"k": "v"}},
            "status": {"phase": "x"}, "data": {"a": "b"}});
        let n = normalize_desired(d);
        assert_eq!(
            n,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"k": "v"}}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn the_desired_hash_ignores_upstream_noise_but_not_content_or_rules() {
        let a = normalize_desired(
            json!({"kind": "K", "metadata": {"name": "a", "resourceVersion": "1"}, "data": {"x": "1"}}),
        );
        let b = normalize_desired(
            json!({"kind": "K", "metadata": {"name": "a", "resourceVersion": "2"}, "data": {"x": "1"}}),
        );
        let c = normalize_desired(json!({"kind": "K", "metadata": {"name": "a"}, "data": {"x": "2"}}));
        assert_eq!(desired_hash(&a, ""), desired_hash(&b, ""));
        assert_ne!(desired_hash(&a, ""), desired_hash(&c, ""));
        assert_ne!(desired_hash(&a, ""), desired_hash(&a, "plugin@sha"));
        let reordered: Value =
            serde_json::from_str(r#"{"data": {"x": "1"}, "metadata": {"name": "a"}, "kind": "K"}"#).unwrap();
        assert_eq!(desired_hash(&a, ""), desired_hash(&reordered, ""), "field order does not matter");
    }

    #[test]
    fn merge_patches_null_out_keys_removed_upstream() {
        let existing = json!({"metadata": {"labels": {"keep": "1", "gone": "2"}}, "data": {"a": "1", "b": "2"}});
        let mut patch = json!({"metadata": {"labels": {"keep": "1"}}, "data": {"a": "1"}});
        add_removals(&mut patch, &existing, &["/metadata/labels", "/data", "/binaryData"]);
        assert_eq!(patch, json!({"metadata": {"labels": {"keep": "1", "gone": null}}, "data": {"a": "1", "b": null}}));
    }
}
