//! One reconcile: bring downstream in line with one upstream object (create, update, or delete
//! the owned copy), keep the optional upstream finalizer and status in step, and remove the
//! namespaces downsync created once their upstream namespace is gone.

use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject};
use kube::{Api, ResourceExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::cache::Cached;
use super::context::{Controller, Watched};
use super::error_policy::ReconcileError;
use super::keys::{UpstreamKey, WorkKey};
use super::namespaces::Cleanup;
use crate::kube::upstream;
use crate::sync::mapping;
use crate::sync::{DownstreamKey, Operation, SyncError};

/// What a successful reconcile asks of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more until the next event.
    Done,
    /// Look again after this long (a deletion in progress, a grace period).
    After(Duration),
}

/// Result of one reconcile.
pub type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// The object as JSON, with its apiVersion and kind: list and watch items often lack them.
pub fn to_value(obj: &DynamicObject, ar: &ApiResource) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
    map.insert("kind".into(), Value::String(ar.kind.clone()));
    // Typed metadata always serialises, to a map.
    map.insert("metadata".into(), serde_json::to_value(&obj.metadata).unwrap_or(Value::Null));
    if let Value::Object(body) = &obj.data {
        for (k, v) in body {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(map)
}

/// Reconciles one key.
pub async fn reconcile(key: &WorkKey, ctx: &Controller) -> Result<Action> {
    // Only the holder of the key's shard writes; the guard keeps a release of the shard waiting
    // until this reconcile ends.
    let shard = ctx.shard_of_key(key);
    let Some(_held) = ctx.ha.enter(shard).await else {
        debug!(key = ?key, shard, "not this replica's shard; skipped");
        return Ok(Action::Done);
    };
    match key {
        WorkKey::Object(k) => {
            // A kind not watched (its CRD gone on a side) has nothing to do until it is again;
            // its keys are queued once it is.
            let Some(w) = ctx.watched(k.resource) else { return Ok(Action::Done) };
            let w = w.as_ref();
            let down_ns = ctx.downstream_ns(k);
            let up = w.upstream(k);
            let down = w.downstream(&k.name, down_ns.as_deref());
            match up {
                Some(obj) if ctx.selected(w, &obj.meta) && obj.meta.metadata.deletion_timestamp.is_none() => {
                    sync(ctx, w, k, obj, down.map(|d| d.json)).await
                }
                up => remove(ctx, w, k, up.as_ref().map(|o| &o.meta), down.map(|d| d.json)).await,
            }
        }
        WorkKey::Namespace { downstream, upstream } => cleanup_namespace(ctx, downstream, upstream).await,
    }
}

async fn sync(ctx: &Controller, w: &Watched, key: &UpstreamKey, up: Cached, down: Option<Value>) -> Result<Action> {
    let kind = w.config.kind.as_str();
    let Cached { meta: up, json: up_json } = up;
    let up = &up;
    if ctx.config.upstream_finalizer()
        && let Err(e) = ctx.upstream.add_finalizer(&w.up_ar, up).await
    {
        ctx.metrics.record_failure(kind, "finalize");
        return Err(ReconcileError::Upstream { operation: "adding the finalizer", message: e.to_string() });
    }
    // The statuses, kept only when they are copied up: the objects themselves go to the sync.
    let statuses = ctx.config.status_upsync().then(|| (status_of(&up_json), down.as_ref().and_then(status_of)));
    let desired = mapping::prepare_desired(up_json, ctx.mapping(), ctx.target()).map_err(|e| {
        ctx.metrics.record_failure(kind, "place");
        ReconcileError::Placement(e.to_string())
    })?;
    if let (Some(ns), Some(up_ns)) = (ctx.downstream_ns(key), key.namespace.as_deref())
        && let Err(source) = ctx.namespaces.ensure(&ns, up_ns).await
    {
        ctx.metrics.record_failure(kind, "namespace");
        return Err(ReconcileError::Namespace { namespace: ns, source });
    }
    let started = Instant::now();
    let result = ctx.syncer.apply(desired, Some(down)).await;
    ctx.metrics.record(kind, &result, started.elapsed().as_secs_f64());
    if !result.drift.is_empty() {
        report_drift(ctx, w, up, &result).await;
    }
    if let Some(e) = result.error {
        if let SyncError::Api { source: crate::sync::ApiError::NotFound, .. } = &e
            && let Some(ns) = ctx.downstream_ns(key)
        {
            // Perhaps the downstream namespace went away under us: look again next time.
            ctx.namespaces.forget(&ns);
        }
        return Err(ReconcileError::Sync(e));
    }
    if let Some((up_status, Some(status))) = statuses
        && up_status.as_ref() != Some(&status)
        && let Err(e) = ctx.upstream.patch_status(&w.up_ar, up, &status).await
    {
        ctx.metrics.record_failure(kind, "upsync");
        return Err(ReconcileError::Upstream { operation: "copying the status", message: e.to_string() });
    }
    Ok(result.retry_after.map_or(Action::Done, Action::After))
}

fn status_of(object: &Value) -> Option<Value> {
    object.get("status").cloned()
}

/// Publishes a Warning Event `Drift` on the upstream object: which fields changed downstream,
/// who changed them, and what the kind's drift policy did.
async fn report_drift(ctx: &Controller, w: &Watched, up: &DynamicObject, result: &crate::sync::SyncResult) {
    let object = result.key.as_ref().map(ToString::to_string).unwrap_or_default();
    let mut by_action: Vec<String> = Vec::new();
    for action in [crate::sync::DriftAction::Revert, crate::sync::DriftAction::Report] {
        let fields: Vec<_> = result.drift.iter().filter(|f| f.action == action).cloned().collect();
        if !fields.is_empty() {
            let done = if action == crate::sync::DriftAction::Revert { "reverted" } else { "kept (policy: report)" };
            by_action.push(format!("{}; {done}", crate::sync::drift::describe(&fields)));
        }
    }
    let note = format!("{object} drifted downstream: {}", by_action.join("; "));
    if let Err(e) = ctx.upstream.warn(&w.up_ar, up, "Drift", note).await {
        warn!(kind = %w.config.kind, object = %object, error = %e, "cannot publish a Drift Event on the upstream object");
    }
}

async fn remove(
    ctx: &Controller,
    w: &Watched,
    key: &UpstreamKey,
    up: Option<&DynamicObject>,
    down: Option<Value>,
) -> Result<Action> {
    let kind = w.config.kind.as_str();
    let holds_finalizer = ctx.config.upstream_finalizer() && up.is_some_and(upstream::has_finalizer);
    if down.is_some() || holds_finalizer {
        if up.is_none()
            && let Some(wait) = ctx.orphan_wait(key)
        {
            return Ok(Action::After(wait));
        }
        let down_ns = ctx.downstream_ns(key);
        let okey = DownstreamKey::new(&w.down_resource, down_ns.as_deref(), &key.name);
        // With a finalizer to release, absence in the cache is confirmed with a read: the
        // cache may not have seen a copy created moments ago.
        let had_copy = down.is_some();
        let cached = down.map(Some);
        let started = Instant::now();
        // With many workspaces, only a copy stamped for this key's workspace is deleted.
        let cluster = key.namespace.as_deref().and_then(|ns| crate::sync::workspaces::split_namespace(ns).0);
        let result = ctx.syncer.delete(&okey, cluster, cached).await;
        ctx.metrics.record(kind, &result, started.elapsed().as_secs_f64());
        match result.error {
            // Not ours: never touched; nothing holds the upstream object on its account.
            Some(SyncError::NotOwned { .. }) => return release(ctx, w, key, up).await,
            Some(e) => return Err(ReconcileError::Sync(e)),
            None => {}
        }
        if result.operation == Operation::Deleting {
            return Ok(Action::After(result.retry_after.unwrap_or(Duration::from_secs(2))));
        }
        ctx.orphan_gone(key);
        if had_copy && let (Some(down_ns), Some(up_ns)) = (down_ns, key.namespace.clone()) {
            // The last copy in a namespace may have gone with its upstream namespace.
            ctx.queue.add_after(WorkKey::Namespace { downstream: down_ns, upstream: up_ns }, NAMESPACE_SETTLE);
        }
    }
    release(ctx, w, key, up).await
}

/// How long after a delete the namespace check waits: the rest of a namespace's objects are
/// usually deleted within moments of each other, and one check then serves them all.
const NAMESPACE_SETTLE: Duration = Duration::from_secs(2);

/// Removes the upstream finalizer, if downsync put one there.
async fn release(ctx: &Controller, w: &Watched, key: &UpstreamKey, up: Option<&DynamicObject>) -> Result<Action> {
    if !ctx.config.upstream_finalizer() {
        return Ok(Action::Done);
    }
    let upstream_err =
        |operation, e: &dyn std::fmt::Display| ReconcileError::Upstream { operation, message: e.to_string() };
    let fetched;
    let obj = match up {
        Some(o) => o,
        None => {
            // Gone from the cache: deleted, or no longer matching the label selector.
            let api: Api<DynamicObject> = ctx
                .upstream
                .api_for(&w.up_ar, key.namespace.as_deref(), None)
                .await
                .map_err(|e| upstream_err("reading the object", &e))?;
            match api.get_opt(&key.name).await {
                Ok(Some(o)) => {
                    fetched = o;
                    &fetched
                }
                Ok(None) => return Ok(Action::Done),
                Err(e) => return Err(upstream_err("reading the object", &e)),
            }
        }
    };
    ctx.upstream.remove_finalizer(&w.up_ar, obj).await.map_err(|e| {
        ctx.metrics.record_failure(&w.config.kind, "finalize");
        debug!(kind = %w.config.kind, object = %obj.name_any(), "cannot remove the upstream finalizer");
        upstream_err("removing the finalizer", &e)
    })?;
    Ok(Action::Done)
}

/// How often a namespace that is still emptying is looked at again.
const NAMESPACE_RECHECK: Duration = Duration::from_secs(5);

async fn cleanup_namespace(ctx: &Controller, downstream: &str, upstream: &str) -> Result<Action> {
    // Still wanted: some selected upstream object lives in it.
    let wanted = ctx.all_watched().iter().any(|(_, w)| w.up_store.any_in(upstream, |o| ctx.selected(w, o)));
    if wanted {
        return Ok(Action::Done);
    }
    match ctx.namespaces.cleanup(downstream, upstream).await {
        Ok(Cleanup::Done | Cleanup::Deleted) => Ok(Action::Done),
        Ok(Cleanup::Kept(why)) => {
            debug!(namespace = %downstream, reason = %why, "downstream namespace kept");
            if why.contains("does not own") {
                info!(namespace = %downstream, reason = %why, "downstream namespace kept");
            }
            Ok(Action::Done)
        }
        Ok(Cleanup::Wait(why)) => {
            debug!(namespace = %downstream, reason = %why, "downstream namespace not empty yet");
            Ok(Action::After(NAMESPACE_RECHECK))
        }
        Err(source) => Err(ReconcileError::Namespace { namespace: downstream.to_string(), source }),
    }
}
