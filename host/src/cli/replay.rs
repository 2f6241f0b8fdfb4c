//! `downsync plugin replay NEW.wasm --against-cluster`: what a new plugin version would write
//! differently from the version in use, per live object. Read-only: every write is a
//! server-side dry run, as in `downsync diff`.
//!
//! Both sets of rules (the plugins folder as it is, and the same with NEW.wasm in place of the
//! plugin of the same name) plan each selected upstream object of the kinds NEW.wasm handles
//! against the live downstream object; the two planned objects are compared.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::diff::{Recording, Seen, desired_objects, unified_with};
use downsync::app::RunConfig;
use downsync::app::startup;
use downsync::plugin::{Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet};
use downsync::sync::{Operation, StateCache, SyncResult, Syncer};

/// Why a replay cannot run.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// Connecting, loading the plugins folder or resolving the kinds failed.
    #[error(transparent)]
    Startup(#[from] startup::Error),
    /// The new component does not load, or cannot join the plugins in use.
    #[error("{path}: {source}")]
    Candidate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<downsync::plugin::Error>,
    },
    /// The new component handles none of the configured kinds.
    #[error("{plugin} handles none of the configured resources (it handles {kinds}); add one with --resource")]
    NoKinds {
        /// Its name.
        plugin: String,
        /// The kinds it handles.
        kinds: String,
    },
    /// A blocking task did not finish.
    #[error("loading the new version stopped: {0}")]
    Task(String),
}

/// Result of a replay.
pub(super) type Result<T, E = Error> = std::result::Result<T, E>;

/// What `replay` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ReplaySummary {
    /// Objects the new version would write differently.
    pub differ: usize,
    /// Objects both versions would treat the same.
    pub same: usize,
    /// Objects the new version fails on (where the active one did not).
    pub errors: usize,
}

/// What one sync would do: the operation and the object written, or why it fails.
type Outcome = std::result::Result<(Operation, Value), String>;

/// What one version would do to one object: the object it would leave downstream (the live one
/// when it writes nothing), or its error.
fn outcome(result: &SyncResult, seen: Seen) -> Outcome {
    if let Some(e) = &result.error {
        return Err(e.to_string());
    }
    let after = seen.after.or(seen.before).unwrap_or(Value::Null);
    Ok((result.operation, after))
}

/// Runs the replay and writes the report to `out`.
pub(super) async fn replay(config: RunConfig, file: &Path, out: &mut String) -> Result<ReplaySummary> {
    config.validate().map_err(startup::Error::from)?;
    let bytes = downsync::plugin::read_component(file, config.engine.max_component_bytes)
        .map_err(|e| Error::Candidate { path: file.to_path_buf(), source: Box::new(e) })?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
    let (engine_config, registry_config) = (config.engine_config(), config.registry_config());
    let (up, down) = startup::connect(&config).await?;
    startup::check_many_workspaces(&config, &up, Some("plugin replay"), &[])?;
    let active = Arc::new(PluginRegistry::new(PluginSet::default(), Metrics::default()));
    let (reloader, _watch) = startup::start_plugins(&config, &active).await?;
    for s in reloader.iter().flat_map(|r| r.status()) {
        if let Some(e) = s.last_error {
            let _ = writeln!(out, "! plugin {} refused: {e}", s.file.display());
        }
    }
    let current: Vec<Plugin> = active.snapshot().plugins().iter().map(|l| l.plugin.clone()).collect();
    let path = file.to_path_buf();
    let (candidate, set) = tokio::task::spawn_blocking(move || -> Result<(Plugin, PluginSet)> {
        let bad = |e: downsync::plugin::Error| Error::Candidate { path: path.clone(), source: Box::new(e) };
        let engine = PluginEngine::new(engine_config).map_err(bad)?;
        let candidate = Plugin::load(&engine, &stem, &bytes).map_err(bad)?;
        let mut plugins: Vec<Plugin> = current.into_iter().filter(|p| p.name() != candidate.name()).collect();
        plugins.push(candidate.clone());
        let set = PluginSet::new(plugins, &registry_config).map_err(bad)?;
        Ok((candidate, set))
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    let replaced = active.snapshot().get(candidate.name()).map(|l| l.plugin.digest().to_string());
    let _ = writeln!(
        out,
        "replaying {} {} (in place of {}) against the live objects; nothing is written",
        candidate.name(),
        candidate.digest(),
        replaced.as_deref().unwrap_or("nothing: a new plugin"),
    );
    let trial = Arc::new(PluginRegistry::new(set, Metrics::default()));
    let resolved = startup::resolve_all(&config, &up, &down).await?;
    let mut sync_config = config.sync.clone();
    sync_config.recreate_timeout = Duration::ZERO;
    let before = Syncer::new(
        Recording::dry_run(down.client.clone()),
        Arc::clone(&active),
        sync_config.clone(),
        StateCache::new(),
    );
    let after = Syncer::new(Recording::dry_run(down.client.clone()), trial, sync_config, StateCache::new());
    let mut summary = ReplaySummary::default();
    let mut kinds = 0;
    for (index, resolved) in resolved.iter().enumerate() {
        if !candidate.info().handles(&resolved.up_ar.group, &resolved.up_ar.kind) {
            continue;
        }
        kinds += 1;
        for (obj, desired) in desired_objects(&config, &up.client, index, resolved, false).await? {
            let Ok(desired) = desired else { continue };
            let a = before.apply(desired.clone(), None).await;
            let b = after.apply(desired, None).await;
            let name = a.key.as_ref().map_or_else(|| kube::ResourceExt::name_any(&obj), ToString::to_string);
            let seen_a = a.key.as_ref().map(|k| before.downstream().take(k)).unwrap_or_default();
            let seen_b = b.key.as_ref().map(|k| after.downstream().take(k)).unwrap_or_default();
            compare(out, &mut summary, &name, outcome(&a, seen_a), outcome(&b, seen_b));
        }
    }
    if kinds == 0 {
        let handled: Vec<String> = candidate.info().kinds.iter().map(|k| format!("{}/{}", k.group, k.kind)).collect();
        return Err(Error::NoKinds { plugin: candidate.name().to_string(), kinds: handled.join(", ") });
    }
    let _ = writeln!(
        out,
        "{} would change, {} the same, {} fail with the new version",
        summary.differ, summary.same, summary.errors
    );
    Ok(summary)
}

/// One object's outcome under the active version (`a`) and the new one (`b`), in `out` and
/// `summary`.
fn compare(out: &mut String, summary: &mut ReplaySummary, name: &str, a: Outcome, b: Outcome) {
    match (a, b) {
        (Ok((op_a, obj_a)), Ok((op_b, obj_b))) => {
            let text = unified_with(&obj_a, &obj_b, ("active", "replayed"));
            if text.is_empty() && op_a.as_str() == op_b.as_str() {
                summary.same += 1;
                return;
            }
            summary.differ += 1;
            let _ = writeln!(
                out,
                "~ {name} ({} with the active version, {} with the new one)",
                op_a.as_str(),
                op_b.as_str()
            );
            out.push_str(&indent(&text));
        }
        (Ok(_), Err(e)) => {
            summary.errors += 1;
            let _ = writeln!(out, "! {name}: the new version fails where the active one does not: {e}");
        }
        (Err(e), Ok(_)) => {
            summary.differ += 1;
            let _ = writeln!(out, "~ {name}: the active version fails ({e}); the new one would sync it");
        }
        (Err(_), Err(e)) => {
            summary.same += 1;
            let _ = writeln!(out, "  {name}: both versions fail; the new one with: {e}");
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
