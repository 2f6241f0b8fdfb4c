//! The downstream cluster through kube-rs: discovery (cached) and dynamic objects.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;

use super::errors::classify;
use crate::sync::config::Propagation;
use crate::sync::error::ApiError;
use crate::sync::syncer::{Downstream, Write};
use crate::sync::types::{DownstreamKey, Gvr, Resource};

/// The downstream API via a kube client.
#[derive(Clone)]
pub struct KubeDownstream {
    client: Client,
    /// Resolved kinds, by (apiVersion, kind). Discovery is asked once per kind.
    resolved: Arc<RwLock<HashMap<(String, String), Resource>>>,
    /// Send every write with `dryRun=All`: the API validates, defaults and answers, and
    /// persists nothing (for `downsync diff`).
    dry_run: bool,
}

impl KubeDownstream {
    /// Wraps a client.
    pub fn new(client: Client) -> Self {
        Self { client, resolved: Arc::default(), dry_run: false }
    }

    /// Wraps a client whose writes are all server-side dry runs: nothing is persisted.
    pub fn dry_run(client: Client) -> Self {
        Self { client, resolved: Arc::default(), dry_run: true }
    }

    fn post_params(&self) -> PostParams {
        PostParams { dry_run: self.dry_run, ..PostParams::default() }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, key: &DownstreamKey) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: key.gvr.group.clone(),
            version: key.gvr.version.clone(),
            api_version: if key.gvr.group.is_empty() {
                key.gvr.version.clone()
            } else {
                format!("{}/{}", key.gvr.group, key.gvr.version)
            },
            kind: key.kind.clone(),
            plural: key.gvr.resource.clone(),
        };
        match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }
}

impl KubeDownstream {
    /// Sends an update; with `dry_run`, as a server-side dry run.
    async fn send(&self, key: &DownstreamKey, write: &Write, dry_run: bool) -> Result<Value, ApiError> {
        let api = self.api(key);
        let pp = PatchParams { dry_run, ..PatchParams::default() };
        let out = match write {
            Write::Replace(obj) => {
                api.replace(&key.name, &PostParams { dry_run, ..PostParams::default() }, &to_dynamic(obj)?).await
            }
            Write::Merge(patch) => api.patch(&key.name, &pp, &Patch::Merge(patch)).await,
            Write::Strategic(patch) => api.patch(&key.name, &pp, &Patch::Strategic(patch)).await,
            Write::Apply { object, field_manager, force } => {
                let mut pp = PatchParams::apply(field_manager);
                pp.force = *force;
                pp.dry_run = dry_run;
                api.patch(&key.name, &pp, &Patch::Apply(object)).await
            }
        };
        to_value(out.map_err(classify)?)
    }
}

fn to_dynamic(obj: &Value) -> Result<DynamicObject, ApiError> {
    serde_json::from_value(obj.clone()).map_err(|e| ApiError::Transport(format!("cannot encode object: {e}")))
}

fn to_value(obj: DynamicObject) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::Transport(format!("cannot decode object: {e}")))
}

impl Downstream for KubeDownstream {
    async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resource, ApiError> {
        let cache_key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.resolved.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&cache_key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await.map_err(|e| match classify(e) {
            ApiError::NotFound => ApiError::UnknownKind(format!("{kind}.{api_version}")),
            other => other,
        })?;
        let resource = Resource {
            gvr: Gvr { group: ar.group, version: ar.version, resource: ar.plural },
            kind: ar.kind,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.resolved.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(cache_key, resource.clone());
        Ok(resource)
    }

    async fn get(&self, key: &DownstreamKey) -> Result<Option<Value>, ApiError> {
        match self.api(key).get_opt(&key.name).await.map_err(classify)? {
            Some(o) => Ok(Some(to_value(o)?)),
            None => Ok(None),
        }
    }

    async fn create(&self, key: &DownstreamKey, obj: &Value) -> Result<Value, ApiError> {
        to_value(self.api(key).create(&self.post_params(), &to_dynamic(obj)?).await.map_err(classify)?)
    }

    async fn update(&self, key: &DownstreamKey, write: &Write) -> Result<Value, ApiError> {
        self.send(key, write, self.dry_run).await
    }

    fn persists(&self) -> bool {
        !self.dry_run
    }

    async fn dry_run(&self, key: &DownstreamKey, write: &Write) -> Result<Value, ApiError> {
        self.send(key, write, true).await
    }

    async fn delete(&self, key: &DownstreamKey, uid: &str, propagation: Propagation) -> Result<(), ApiError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            propagation_policy: Some(match propagation {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            dry_run: self.dry_run,
            ..DeleteParams::default()
        };
        self.api(key).delete(&key.name, &dp).await.map_err(classify)?;
        Ok(())
    }
}
