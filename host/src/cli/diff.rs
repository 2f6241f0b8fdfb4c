//! `downsync diff`: what `run` would change downstream, per object, as a unified YAML diff.
//! The same syncer runs with the same rules, but every write is a server-side dry run: the
//! API validates and defaults, and persists nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use serde_json::Value;

use downsync::app::RunConfig;
use downsync::app::startup::{self, Error, Resolved, Result};
use downsync::kube::KubeDownstream;
use downsync::kube::errors::classify;
use downsync::plugin::{Metrics, PluginRegistry, PluginSet};
use downsync::sync::error::ApiError;
use downsync::sync::mapping;
use downsync::sync::ownership;
use downsync::sync::preservation::for_display;
use downsync::sync::{
    Downstream, DownstreamKey, Operation, Resource, StateCache, SyncError, SyncResult, Syncer, Write,
};

/// What `diff` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct DiffSummary {
    /// Objects that would be created.
    pub create: usize,
    /// Objects that would be updated.
    pub update: usize,
    /// Objects that would be deleted and created again.
    pub recreate: usize,
    /// Owned objects that would be deleted.
    pub delete: usize,
    /// Objects already in sync.
    pub unchanged: usize,
    /// Objects that would be skipped or fail.
    pub errors: usize,
}

/// The before and after of one object, as seen through the dry-run downstream.
#[derive(Debug, Default, Clone)]
pub(super) struct Seen {
    pub(super) before: Option<Value>,
    pub(super) after: Option<Value>,
    /// The create was refused only because the namespace does not exist yet (`run` creates it).
    pub(super) namespace_missing: bool,
}

/// The dry-run downstream, remembering what it was shown and what it answered.
pub(super) struct Recording {
    inner: KubeDownstream,
    seen: Mutex<BTreeMap<DownstreamKey, Seen>>,
}

impl Recording {
    /// Over a dry-run client: the API validates and defaults every write and persists nothing.
    pub(super) fn dry_run(client: kube::Client) -> Self {
        Self { inner: KubeDownstream::dry_run(client), seen: Mutex::default() }
    }

    fn note(&self, key: &DownstreamKey, f: impl FnOnce(&mut Seen)) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        f(seen.entry(key.clone()).or_default());
    }

    pub(super) fn take(&self, key: &DownstreamKey) -> Seen {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).remove(key).unwrap_or_default()
    }
}

impl Downstream for Recording {
    async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resource, ApiError> {
        self.inner.resolve(api_version, kind).await
    }

    async fn get(&self, key: &DownstreamKey) -> Result<Option<Value>, ApiError> {
        let got = self.inner.get(key).await?;
        self.note(key, |s| {
            if s.before.is_none() {
                s.before.clone_from(&got);
            }
        });
        Ok(got)
    }

    async fn create(&self, key: &DownstreamKey, obj: &Value) -> Result<Value, ApiError> {
        let out = match self.inner.create(key, obj).await {
            Err(ApiError::NotFound) if key.namespace.is_some() => {
                self.note(key, |s| s.namespace_missing = true);
                obj.clone()
            }
            other => other?,
        };
        self.note(key, |s| s.after = Some(out.clone()));
        Ok(out)
    }

    async fn update(&self, key: &DownstreamKey, write: &Write) -> Result<Value, ApiError> {
        let out = self.inner.update(key, write).await?;
        self.note(key, |s| s.after = Some(out.clone()));
        Ok(out)
    }

    async fn dry_run(&self, key: &DownstreamKey, write: &Write) -> Result<Value, ApiError> {
        self.inner.dry_run(key, write).await
    }

    async fn delete(
        &self,
        key: &DownstreamKey,
        uid: &str,
        propagation: downsync::sync::Propagation,
    ) -> Result<(), ApiError> {
        self.inner.delete(key, uid, propagation).await
    }

    fn persists(&self) -> bool {
        self.inner.persists()
    }
}

fn yaml(obj: &Value) -> String {
    serde_yaml_ng::to_string(obj).unwrap_or_else(|e| format!("<cannot render: {e}>\n"))
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// Secret values never reach the terminal: like `kubectl diff`, each value becomes `***`, or
/// `*** (before)` / `*** (after)` where it changed, so a change still shows.
fn mask_secrets(before: &mut Value, after: &mut Value) {
    let is_secret = |v: &Value| v["kind"] == "Secret" && v["apiVersion"] == "v1";
    if !is_secret(before) && !is_secret(after) {
        return;
    }
    for field in ["data", "stringData"] {
        let old = before.get(field).and_then(Value::as_object).cloned().unwrap_or_default();
        let new = after.get(field).and_then(Value::as_object).cloned().unwrap_or_default();
        if let Some(m) = before.get_mut(field).and_then(Value::as_object_mut) {
            for (k, v) in m.iter_mut() {
                let same = new.get(k) == Some(&*v);
                *v = Value::String(if same { "***" } else { "*** (before)" }.into());
            }
        }
        if let Some(m) = after.get_mut(field).and_then(Value::as_object_mut) {
            for (k, v) in m.iter_mut() {
                let same = old.get(k) == Some(&*v);
                *v = Value::String(if same { "***" } else { "*** (after)" }.into());
            }
        }
    }
}

/// A unified diff of two objects' YAML, three lines of context. Secret values are masked.
pub(super) fn unified(before: &Value, after: &Value) -> String {
    unified_with(before, after, ("live", "after sync"))
}

/// [`unified`] with the two sides named.
pub(super) fn unified_with(before: &Value, after: &Value, names: (&str, &str)) -> String {
    let (mut before, mut after) = (for_display(before.clone()), for_display(after.clone()));
    mask_secrets(&mut before, &mut after);
    let (a, b) = (yaml(&before), yaml(&after));
    similar::TextDiff::from_lines(&a, &b).unified_diff().context_radius(3).header(names.0, names.1).to_string()
}

/// The selected upstream objects of one resource, sorted, each as the desired object `run`
/// would sync (or why it cannot be placed). With `many_workspaces` (an upstream serving many
/// kcp workspaces), each object's namespace is qualified with its workspace first, as `run`'s
/// cache does, so that it is placed in that workspace's downstream namespace.
pub(super) async fn desired_objects(
    config: &RunConfig,
    up: &kube::Client,
    index: usize,
    resolved: &Resolved,
    many_workspaces: bool,
) -> Result<Vec<(DynamicObject, std::result::Result<Value, String>)>> {
    let Resolved { config: r, up_ar, .. } = resolved;
    let mut lp = ListParams::default();
    if let Some(sel) = &r.label_selector {
        lp = lp.labels(sel);
    }
    let upstream = Api::<DynamicObject>::all_with(up.clone(), up_ar).list(&lp).await.map_err(|e| Error::Resource {
        index,
        resource: r.describe(),
        side: "upstream",
        message: format!("cannot list: {}", classify(e)),
    })?;
    let mut objects: Vec<DynamicObject> = upstream
        .items
        .into_iter()
        .filter(|o| config.selects(r, o.metadata.namespace.as_deref(), &o.name_any()))
        .map(|mut o| {
            if many_workspaces {
                downsync::app::watches::qualify_by_workspace(&mut o);
            }
            // As `run`'s cache holds it: the intent (and so the desired hash) is read from the
            // same compact managedFields entry, or an object `run` keeps unchanged would show
            // as an update here.
            downsync::app::packing::compact_managed_fields(&mut o, config.client_intent());
            o
        })
        .collect();
    objects.sort_by_key(|o| (o.metadata.namespace.clone(), o.name_any()));
    Ok(objects
        .into_iter()
        .map(|obj| {
            let value = downsync::app::reconcile::to_value(&obj, up_ar);
            let desired = mapping::prepare_desired(value, &config.namespace_mapping, &config.sync.ownership.target)
                .map_err(|e| e.to_string());
            (obj, desired)
        })
        .collect())
}

/// Runs the diff and writes the report to `out`.
pub(super) async fn diff(config: RunConfig, out: &mut String) -> Result<DiffSummary> {
    config.validate()?;
    let (up, down) = startup::connect(&config).await?;
    let rules = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let (reloader, _watch) = startup::start_plugins(&config, &rules).await?;
    for s in reloader.iter().flat_map(|r| r.status()) {
        if let Some(e) = s.last_error {
            let _ = writeln!(out, "! plugin {} refused: {e}", s.file.display());
        }
    }
    let resolved = startup::resolve_all(&config, &up, &down).await?;
    // Many kcp workspaces are kept apart as `run` keeps them, or refused for what `run` refuses.
    let many = startup::check_many_workspaces(&config, &up, None, &resolved)?;
    let mut sync_config = config.sync.clone();
    // A dry-run delete never completes: a recreate is reported, not waited for.
    sync_config.recreate_timeout = Duration::ZERO;
    let recording = Recording::dry_run(down.client.clone());
    let syncer = Syncer::new(recording, Arc::clone(&rules), sync_config, StateCache::new());
    let mut summary = DiffSummary::default();
    for (index, resolved) in resolved.iter().enumerate() {
        let mut wanted = HashSet::new();
        for (obj, desired) in desired_objects(&config, &up.client, index, resolved, many).await? {
            let desired = match desired {
                Ok(d) => d,
                Err(e) => {
                    summary.errors += 1;
                    let _ = writeln!(out, "! {e}");
                    continue;
                }
            };
            let ns = desired.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            wanted.insert((ns, obj.name_any()));
            let result = syncer.apply(desired, None).await;
            let key = result.key.clone();
            let seen = key.as_ref().map(|k| syncer.downstream().take(k)).unwrap_or_default();
            let name = key.map_or_else(|| obj.name_any(), |k| k.to_string());
            let name = with_workspace(name, obj.metadata.namespace.as_deref());
            write_outcome(out, &mut summary, &name, &result, seen);
        }
        summary.delete += deletes(&config, &down.client, index, resolved, &wanted, out).await?;
    }
    let _ = writeln!(
        out,
        "{} to create, {} to update, {} to recreate, {} to delete, {} unchanged, {} errors",
        summary.create, summary.update, summary.recreate, summary.delete, summary.unchanged, summary.errors
    );
    Ok(summary)
}

/// An object's name in the report, and, for an object of one of many kcp workspaces (its
/// upstream namespace qualified, `<logical cluster>/<namespace>`), the workspace and namespace
/// it comes from: its downstream namespace alone does not say.
pub(super) fn with_workspace(name: String, upstream_ns: Option<&str>) -> String {
    match upstream_ns.map(downsync::sync::workspaces::split_namespace) {
        Some((Some(cluster), ns)) => format!("{name} [kcp workspace {cluster}, namespace {ns}]"),
        _ => name,
    }
}

/// The owned downstream objects of one resource that `run` would delete (no wanted upstream
/// object stands for them), each a line in `out`; how many.
async fn deletes(
    config: &RunConfig,
    down: &kube::Client,
    index: usize,
    resolved: &Resolved,
    wanted: &HashSet<(Option<String>, String)>,
    out: &mut String,
) -> Result<usize> {
    let Resolved { config: r, down_ar, down_resource, .. } = resolved;
    let owned = Api::<DynamicObject>::all_with(down.clone(), down_ar)
        .list(&ListParams::default().labels(&ownership::owned_selector(&config.sync.ownership)))
        .await
        .map_err(|e| Error::Resource {
            index,
            resource: r.describe(),
            side: "downstream",
            message: format!("cannot list: {}", classify(e)),
        })?;
    let mut count = 0;
    for d in owned.items {
        let value = serde_json::to_value(&d).unwrap_or(Value::Null);
        let id = (d.metadata.namespace.clone(), d.name_any());
        // A copy of one of many workspaces is owned for the workspace its stamp records.
        let cluster = ownership::recorded_cluster(&value);
        if wanted.contains(&id) || !ownership::is_owned(&value, &config.sync.ownership, cluster) {
            continue;
        }
        count += 1;
        let key = DownstreamKey::new(down_resource, id.0.as_deref(), &id.1).to_string();
        let upstream = cluster.map(|c| {
            downsync::sync::workspaces::qualify_namespace(c, mapping::upstream_namespace(&value).unwrap_or_default())
        });
        let key = with_workspace(key, upstream.as_deref());
        let _ = writeln!(out, "- {key} (delete: gone upstream or no longer selected)");
    }
    Ok(count)
}

/// One object's line (and its YAML or diff) in `out`, counted in `summary`.
fn write_outcome(out: &mut String, summary: &mut DiffSummary, name: &str, result: &SyncResult, seen: Seen) {
    match (&result.error, result.operation) {
        (Some(SyncError::RecreateTimeout { .. }), _) => {
            summary.recreate += 1;
            let _ = writeln!(out, "~ {name} (recreate: a field that cannot change in place changed)");
        }
        (Some(e), _) => {
            summary.errors += 1;
            let _ = writeln!(out, "! {name}: {e}");
        }
        (None, Operation::Created) => {
            summary.create += 1;
            let note = if seen.namespace_missing { ", with its namespace" } else { "" };
            let _ = writeln!(out, "+ {name} (create{note})");
            let mut after = seen.after.map(for_display).unwrap_or(Value::Null);
            mask_secrets(&mut Value::Null, &mut after);
            out.push_str(&indent(&yaml(&after), "  + "));
        }
        (None, Operation::Updated) => {
            summary.update += 1;
            let _ = writeln!(out, "~ {name} (update)");
            let before = seen.before.unwrap_or(Value::Null);
            let after = seen.after.unwrap_or(Value::Null);
            out.push_str(&indent(&unified(&before, &after), "  "));
        }
        (None, Operation::Unchanged) => summary.unchanged += 1,
        (None, Operation::Skipped) => {
            summary.errors += 1;
            let why = result.reason.as_deref().unwrap_or("a rule said so");
            let _ = writeln!(out, "! {name}: skipped: {why}");
        }
        (None, op) => {
            let _ = writeln!(out, "? {name}: {}", op.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_diff_hides_bookkeeping_and_shows_the_change() {
        let before = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "1", "annotations": {ownership::DESIRED_HASH_ANNOTATION: "h1"}},
            "data": {"k": "old"}});
        let after = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "2", "annotations": {ownership::DESIRED_HASH_ANNOTATION: "h2"}},
            "data": {"k": "new"}});
        let d = unified(&before, &after);
        assert!(d.contains("-  k: old") && d.contains("+  k: new"), "{d}");
        assert!(!d.contains("resourceVersion") && !d.contains("desired-hash"), "{d}");
    }

    #[test]
    fn an_object_of_one_of_many_workspaces_is_named_with_its_workspace() {
        let name = "ConfigMap ds-0123456789abcdef/cm".to_string();
        assert_eq!(
            with_workspace(name.clone(), Some("2abc9xyz/app")),
            "ConfigMap ds-0123456789abcdef/cm [kcp workspace 2abc9xyz, namespace app]"
        );
        assert_eq!(with_workspace(name.clone(), Some("app")), name, "one workspace or plain Kubernetes: as before");
        assert_eq!(with_workspace(name.clone(), None), name);
    }

    #[test]
    fn secret_values_are_masked_but_their_changes_show() {
        let mk = |token: &str| {
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"token": token, "ca": "Y2E="}})
        };
        let d = unified(&mk("b2xk"), &mk("bmV3"));
        assert!(!d.contains("b2xk") && !d.contains("bmV3") && !d.contains("Y2E="), "{d}");
        assert!(d.contains("-  token: '*** (before)'") && d.contains("+  token: '*** (after)'"), "{d}");
        assert!(d.contains("ca: '***'"), "{d}");
    }
}
