//! What downsync writes upstream: its finalizer (added and removed with JSON patches that
//! test what they change, so a concurrent writer is never overwritten), the downstream
//! status, and Events on the upstream object when a sync fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use serde_json::{Value, json};

use super::errors::classify;
use super::events::Recorder;
use crate::sync::error::ApiError;
use crate::sync::workspaces;

/// The finalizer downsync puts on upstream objects when asked to, so that an upstream delete
/// completes only after the downstream copy is gone.
pub const FINALIZER: &str = "downsync.dev/syncer";

/// The upstream API as the program needs it.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    recorder: Arc<Recorder>,
    /// With an upstream that serves many kcp workspaces: a client per workspace.
    workspaces: Option<Arc<Workspaces>>,
}

/// The workspaces behind a multi-workspace kcp endpoint. Reads of all of them go through the
/// endpoint; a write (and a read of one object) must name the workspace, at
/// `…/clusters/<logical cluster>`: so each gets a client (and an Event recorder), made on
/// first use and kept.
struct Workspaces {
    /// The endpoint's client configuration (its URL ends in `/clusters/*`).
    base: kube::Config,
    controller: String,
    instance: Option<String>,
    clients: Mutex<HashMap<String, (Client, Arc<Recorder>)>>,
}

impl Workspaces {
    /// The client and recorder of workspace `cluster`. A new one is built on the blocking
    /// pool: building a client (its TLS configuration, the certificates parsed) takes
    /// milliseconds, which a tokio worker must not spend. Two first uses at once may both build
    /// one; the first kept is used by both.
    async fn get(self: &Arc<Self>, cluster: &str) -> Result<(Client, Arc<Recorder>), ApiError> {
        if let Some(c) = self.clients.lock().unwrap_or_else(PoisonError::into_inner).get(cluster) {
            return Ok(c.clone());
        }
        let (this, name) = (Arc::clone(self), cluster.to_string());
        let built = tokio::task::spawn_blocking(move || this.build(&name))
            .await
            .map_err(|e| ApiError::Transport(format!("building the client of workspace {cluster} stopped: {e}")))??;
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(clients.entry(cluster.to_string()).or_insert(built).clone())
    }

    /// Builds the client and recorder of workspace `cluster`. Blocking: see [`Workspaces::get`].
    fn build(&self, cluster: &str) -> Result<(Client, Arc<Recorder>), ApiError> {
        let url = workspaces::cluster_url(&self.base.cluster_url.to_string(), cluster)
            .ok_or_else(|| ApiError::Transport(format!("{cluster:?} is not a logical cluster name")))?;
        let mut config = self.base.clone();
        config.cluster_url =
            url.parse().map_err(|e| ApiError::Transport(format!("workspace URL {url} is not a URL: {e}")))?;
        let started = std::time::Instant::now();
        let client = Client::try_from(config).map_err(|e| ApiError::Transport(format!("a client for {url}: {e}")))?;
        let recorder = Arc::new(Recorder::new(client.clone(), &self.controller, self.instance.clone()));
        tracing::debug!(
            workspace = cluster,
            micros = started.elapsed().as_micros(),
            "built the client of a workspace, on the blocking pool"
        );
        Ok((client, recorder))
    }
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
        Self { recorder: Arc::new(Recorder::new(client.clone(), controller, instance)), client, workspaces: None }
    }

    /// An upstream that serves many kcp workspaces through `config`'s URL: what is written, and
    /// what is read by name, goes to each object's own workspace.
    #[must_use]
    pub fn with_workspaces(mut self, config: kube::Config, controller: &str, instance: Option<String>) -> Self {
        self.workspaces = Some(Arc::new(Workspaces {
            base: config,
            controller: controller.to_string(),
            instance,
            clients: Mutex::default(),
        }));
        self
    }

    /// Where an object in upstream namespace `namespace` (qualified with its workspace when
    /// there are many, see [`workspaces::qualify_namespace`]) is read and written: the client,
    /// the Event recorder, and the plain namespace. `cluster` names the workspace of an object
    /// that has no namespace, or was read with its plain one (its `kcp.io/cluster`).
    async fn route_full(
        &self,
        namespace: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<(Client, Arc<Recorder>, Option<String>), ApiError> {
        let (from_ns, plain) = match namespace.map(workspaces::split_namespace) {
            Some((c, plain)) => (c, Some(plain.to_string())),
            None => (None, None),
        };
        let Some(ws) = &self.workspaces else {
            return Ok((self.client.clone(), Arc::clone(&self.recorder), namespace.map(str::to_string)));
        };
        let cluster = from_ns.or(cluster).ok_or_else(|| {
            ApiError::Transport("an object read from many workspaces names no logical cluster (kcp.io/cluster)".into())
        })?;
        let (client, recorder) = ws.get(cluster).await?;
        Ok((client, recorder, plain))
    }

    /// The client and plain namespace for upstream namespace `namespace` (see
    /// [`Upstream::route_full`]).
    pub async fn route(
        &self,
        namespace: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<(Client, Option<String>), ApiError> {
        self.route_full(namespace, cluster).await.map(|(c, _, ns)| (c, ns))
    }

    async fn route_obj(&self, obj: &DynamicObject) -> Result<(Client, Arc<Recorder>, Option<String>), ApiError> {
        let cluster = obj.metadata.annotations.as_ref().and_then(|a| a.get(workspaces::CLUSTER_ANNOTATION));
        self.route_full(obj.metadata.namespace.as_deref(), cluster.map(String::as_str)).await
    }

    /// The API of one upstream object's kind, in its namespace and workspace.
    pub async fn api_for(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<Api<DynamicObject>, ApiError> {
        let (client, ns) = self.route(namespace, cluster).await?;
        Ok(api(&client, ar, ns.as_deref()))
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
        let (client, _, ns) = self.route_obj(obj).await?;
        api(&client, ar, ns.as_deref())
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Writes `status` to the upstream object's status subresource (merge patch).
    pub async fn patch_status(&self, ar: &ApiResource, obj: &DynamicObject, status: &Value) -> Result<(), ApiError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (client, _, ns) = self.route_obj(obj).await?;
        api(&client, ar, ns.as_deref())
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
        let (_, recorder, ns) = self.route_obj(obj).await?;
        let mut reference = obj.object_ref(ar);
        reference.namespace = ns;
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        recorder.warn(&reference, "Sync", reason, &note).await.map_err(classify)
    }
}
