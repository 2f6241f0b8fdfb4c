//! What downsync writes upstream: its finalizer (added and removed with JSON patches that
//! test what they change, so a concurrent writer is never overwritten), the downstream
//! status, and Events on the upstream object when a sync fails.

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use serde_json::{Value, json};

use super::errors::classify;
use super::events::Recorder;
use crate::sync::error::ApiError;

/// The finalizer downsync puts on upstream objects when asked to, so that an upstream delete
/// completes only after the downstream copy is gone.
pub const FINALIZER: &str = "downsync.dev/syncer";

/// The upstream API as the program needs it.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    recorder: Arc<Recorder>,
}

fn api(client: &Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Whether an upstream object carries downsync's finalizer.
pub fn has_finalizer(obj: &DynamicObject) -> bool {
    obj.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

impl Upstream {
    /// The upstream through `client`; events are reported as `controller`/`instance`.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self { recorder: Arc::new(Recorder::new(client.clone(), controller, instance)), client }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Adds the finalizer, unless present. The patch tests the resourceVersion it saw, so a
    /// concurrent change makes it fail (and the caller retry) rather than clobber anything.
    pub async fn add_finalizer(&self, ar: &ApiResource, obj: &DynamicObject) -> Result<(), ApiError> {
        if has_finalizer(obj) {
            return Ok(());
        }
        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
        let add = match &obj.metadata.finalizers {
            Some(list) if !list.is_empty() => {
                json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
            }
            _ => json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
        };
        let patch = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, add]);
        self.json_patch(ar, obj, patch).await
    }

    /// Removes the finalizer, if present. The patch tests the entry at the index it removes.
    pub async fn remove_finalizer(&self, ar: &ApiResource, obj: &DynamicObject) -> Result<(), ApiError> {
        let Some(i) = obj.metadata.finalizers.as_ref().and_then(|f| f.iter().position(|x| x == FINALIZER)) else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{i}");
        let patch = json!([{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]);
        match self.json_patch(ar, obj, patch).await {
            // Gone already: nothing holds it.
            Err(ApiError::NotFound) => Ok(()),
            other => other,
        }
    }

    async fn json_patch(&self, ar: &ApiResource, obj: &DynamicObject, patch: Value) -> Result<(), ApiError> {
        let patch: json_patch::Patch = serde_json::from_value(patch)
            .map_err(|e| ApiError::Transport(format!("cannot build a JSON patch: {e}")))?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        api(&self.client, ar, obj.metadata.namespace.as_deref())
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Writes `status` to the upstream object's status subresource (merge patch).
    pub async fn patch_status(&self, ar: &ApiResource, obj: &DynamicObject, status: &Value) -> Result<(), ApiError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        api(&self.client, ar, obj.metadata.namespace.as_deref())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Publishes a Warning Event on the upstream object. Repeats of the same failure (same
    /// reason and note) are folded into one Event series; another note is another Event.
    pub async fn warn(
        &self,
        ar: &ApiResource,
        obj: &DynamicObject,
        reason: &str,
        note: String,
    ) -> Result<(), ApiError> {
        let reference = obj.object_ref(ar);
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        self.recorder.warn(&reference, "Sync", reason, &note).await.map_err(classify)
    }
}
