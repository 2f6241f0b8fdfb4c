//! `downsync explain`: for each field where an object's downstream copy differs from upstream,
//! which plugin (or built-in rule) kept or changed it.
//!
//! The running process answers `/explain?kind=K&namespace=NS&name=N`: it evaluates the rules in
//! use on the cached upstream object against the live downstream one (every hook, nothing
//! written), records each step's changed paths, and attributes every differing field to the
//! last step that touched it. The answer also carries the explain record of the object's last
//! syncs ([`crate::plugin::Journal`]). Secret values never appear.

use std::sync::Arc;

use serde_json::{Value, json};

use super::context::Controller;
use super::http::Explainer;
use super::keys::UpstreamKey;
use crate::plugin::{Journal, JournalEntry as Entry, PluginRegistry, RuleSnapshot, group_kind};
use crate::sync::desired::{normalize_desired, object_ref};
use crate::sync::differ::{covers, delta};
use crate::sync::intent::Intent;
use crate::sync::managers::{self, Manager};
use crate::sync::mapping;
use crate::sync::ownership;
use crate::sync::preservation::{self, PreserveOptions, for_display};
use crate::sync::rules::RuleDecision;

/// One step of the rule pipeline and the fields it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStep {
    /// `plugin service@0123456789ab` or `built-in preservation`.
    pub who: String,
    /// `transform`, `preserve` or `preservation`.
    pub hook: String,
    /// Its decision (`apply`, `recreate`, `skip`, `failed: …`).
    pub decision: String,
    /// The fields it changed.
    pub paths: Vec<String>,
}

impl RuleStep {
    fn of(e: &Entry) -> Self {
        Self {
            who: format!("plugin {}@{}", e.plugin, e.digest),
            hook: e.hook.to_string(),
            decision: e.decision.clone(),
            paths: e.paths.clone(),
        }
    }
}

/// Why one field differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Field {
    /// JSON pointer.
    pub path: String,
    /// The upstream value (`***` for Secret data and annotations), or absent.
    pub upstream: Option<Value>,
    /// The downstream value (`***` for Secret data and annotations), or absent.
    pub downstream: Option<Value>,
    /// Who kept or changed it: a plugin with its digest, a built-in rule, or the downstream cluster.
    pub by: String,
    /// In a sentence.
    pub why: String,
}

/// What the reader compares: `diff`'s view ([`for_display`]) less the ownership stamp too,
/// which upstream never has.
fn comparable(obj: Value) -> Value {
    let mut obj = for_display(obj);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(ownership::OWNER_ANNOTATION);
        }
        if let Some(l) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            l.remove(ownership::MANAGED_BY_LABEL);
            l.remove(ownership::TARGET_LABEL);
        }
        for side in ["annotations", "labels"] {
            if meta.get(side).and_then(Value::as_object).is_some_and(serde_json::Map::is_empty) {
                meta.remove(side);
            }
        }
    }
    obj
}

/// Attributes each field where `downstream` differs from `upstream` to the last step that
/// touched it (or a path under or over it); fields no step touched are explained by where they
/// are. Pure: the pipeline's steps are given.
pub fn attribute(
    upstream: &Value,
    downstream: &Value,
    steps: &[RuleStep],
    ignore: &[String],
    secret: bool,
) -> Vec<Field> {
    let (up, down) = (comparable(upstream.clone()), comparable(downstream.clone()));
    let shown = |v: Option<&Value>, path: &str| {
        // A Secret's annotations are masked too: `kubectl.kubernetes.io/last-applied-configuration`
        // holds its whole data.
        let hidden = secret
            && ["/data", "/stringData", "/metadata/annotations"].iter().any(|p| covers(p, path) || covers(path, p));
        v.map(|v| if hidden { Value::String("***".into()) } else { v.clone() })
    };
    delta(&up, &down)
        .paths
        .into_iter()
        .map(|path| {
            let (u, d) = (up.pointer(&path), down.pointer(&path));
            let step = steps.iter().rev().find(|s| s.paths.iter().any(|p| covers(p, &path) || covers(&path, p)));
            let ignored = ignore.iter().find(|pat| crate::sync::pointer::is_prefix_pattern(pat, &path));
            let (by, why) = match (step, ignored) {
                (Some(s), _) => {
                    let verb = match (s.hook.as_str(), u.is_some(), d.is_some()) {
                        (_, _, false) => "removed it",
                        ("transform", _, _) => "changed it",
                        (_, false, true) => "kept the downstream value (upstream has none)",
                        _ => "kept the downstream value over the upstream one",
                    };
                    (format!("{} {}", s.who, s.hook), format!("{verb} (decision {})", s.decision))
                }
                (None, Some(pat)) => (
                    "ignore-paths".to_string(),
                    format!("matches the ignored path {pat}: the differ leaves it to the downstream cluster"),
                ),
                (None, None) if u.is_none() => (
                    "downstream cluster".to_string(),
                    "set downstream (a server default or another writer); downsync does not set it".to_string(),
                ),
                (None, None) if d.is_none() => (
                    "not synced".to_string(),
                    "upstream has it and downstream does not: the next sync writes it, or its last sync failed"
                        .to_string(),
                ),
                (None, None) => (
                    "not synced".to_string(),
                    "no rule changes it: drift downstream or a pending sync, which writes the upstream value"
                        .to_string(),
                ),
            };
            Field { path: path.clone(), upstream: shown(u, &path), downstream: shown(d, &path), by, why }
        })
        .collect()
}

/// Runs every hook of the rules in use on `desired` against `live`, with a private record, and
/// returns the steps in order and the ignore paths. Blocking (the hooks run WASM).
fn evaluate(
    rules: &PluginRegistry,
    snapshot: &RuleSnapshot,
    raw: Value,
    live: &Value,
    opts: &PreserveOptions,
    config_ignore: &[String],
) -> Result<(Vec<RuleStep>, Vec<String>), String> {
    let intent = Intent::of(&raw);
    let desired = normalize_desired(raw);
    let object = object_ref(&desired);
    let (group, kind) = group_kind(&desired);
    let set = snapshot.set();
    // A record of its own per chain, holding every step however long the chain.
    let record = || Journal::with_entries(1, 1024);
    let metrics = rules.metrics().clone().recording_into(record());
    let transformed = set.transform(&metrics, desired, &intent).map_err(|e| e.to_string())?;
    let transform_steps: Vec<RuleStep> = metrics.journal().entries(&object).iter().map(RuleStep::of).collect();
    let preserved = preservation::preserve(live, &transformed, opts).map_err(|e| e.to_string())?;
    let builtin = RuleStep {
        who: "built-in preservation".into(),
        hook: "preservation".into(),
        decision: "apply".into(),
        paths: delta(&transformed, &preserved).paths,
    };
    let metrics = metrics.recording_into(record());
    let decision = set.preserve(&metrics, live, preserved, &intent).map_err(|e| e.to_string())?;
    let preserve_steps = metrics.journal().entries(&object).into_iter().map(|e| RuleStep::of(&e));
    let mut steps = transform_steps;
    steps.push(builtin);
    steps.extend(preserve_steps);
    if let RuleDecision::Recreate(why) | RuleDecision::Skip(why) = &decision {
        tracing::debug!(object, reason = %why, "explain: the rules would not write in place");
    }
    let mut ignore = config_ignore.to_vec();
    ignore.extend(set.ignore_paths(&metrics, &group, &kind).map_err(|e| e.to_string())?);
    Ok((steps, ignore))
}

impl Controller {
    /// The explanation of one object, by upstream kind, namespace and name.
    pub(super) async fn explain(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<Value, String> {
        let (index, w) = self
            .all_watched()
            .into_iter()
            .find(|(_, w)| w.config.kind.eq_ignore_ascii_case(kind) || w.up_ar.plural.eq_ignore_ascii_case(kind))
            .ok_or_else(|| match self.kinds.iter().find(|s| s.config.kind.eq_ignore_ascii_case(kind)) {
                Some(s) => format!("kind {} is configured but not served on both sides yet", s.config.describe()),
                None => format!("kind {kind} is not synced by this process"),
            })?;
        let key = UpstreamKey { resource: index, namespace: namespace.map(str::to_string), name: name.to_string() };
        let up = w.upstream(&key).ok_or_else(|| self.not_found(&w, kind, namespace, name))?;
        // With many kcp workspaces the namespace is `<logical cluster>/<namespace>`.
        let workspace = namespace.and_then(|ns| crate::sync::workspaces::split_namespace(ns).0);
        let raw = mapping::prepare_desired(up.json, self.mapping(), self.target()).map_err(|e| e.to_string())?;
        let down_ns = self.downstream_ns(&key);
        let live = w
            .downstream(name, down_ns.as_deref())
            .map(|d| d.json)
            .ok_or_else(|| format!("{kind} {} has no owned copy downstream yet", describe(down_ns.as_deref(), name)))?;
        let object = object_ref(&raw);
        let secret = w.up_ar.kind == "Secret" && w.up_ar.group.is_empty();
        let rules: Arc<PluginRegistry> = Arc::clone(self.syncer.rules());
        let snapshot = crate::sync::Rules::snapshot(&rules);
        let opts = PreserveOptions { preserve: self.syncer.config().preserve_paths.clone() };
        let ignore = self.syncer.config().ignore_paths.clone();
        let (upstream_view, live_view) = (raw.clone(), live.clone());
        let evaluated = tokio::task::spawn_blocking(move || evaluate(&rules, &snapshot, raw, &live, &opts, &ignore))
            .await
            .map_err(|e| format!("the evaluation stopped: {e}"))??;
        let (steps, ignore) = evaluated;
        let mut fields = attribute(&upstream_view, &live_view, &steps, &ignore, secret);
        // Who wrote each field downstream is in managedFields, which the watch cache drops.
        let key = crate::sync::DownstreamKey::new(&w.down_resource, down_ns.as_deref(), name);
        let managers = match crate::sync::Downstream::get(self.syncer.downstream(), &key).await {
            Ok(Some(fresh)) => managers::managers(&fresh),
            _ => Vec::new(),
        };
        name_writers(&mut fields, &Intent::of(&upstream_view), &managers);
        let history = self.syncer.rules().metrics().journal().entries(&object);
        let mut answer = json!({
            "object": object,
            "fields": fields,
            "steps": steps.iter().map(|s| json!({"by": s.who, "hook": s.hook, "decision": s.decision, "paths": s.paths})).collect::<Vec<_>>(),
            "history": history,
        });
        if let Some(cluster) = workspace {
            // The record of the object's syncs is kept by its downstream name, which is
            // distinct per workspace; the answer names the workspace it stands for.
            answer["workspace"] = json!(cluster);
            answer["upstreamNamespace"] = json!(namespace.map(|ns| crate::sync::workspaces::split_namespace(ns).1));
        }
        Ok(answer)
    }

    /// Why an object is not in the upstream cache: with many kcp workspaces and no workspace
    /// named, which workspaces hold one of that namespace and name.
    fn not_found(&self, w: &super::context::Watched, kind: &str, namespace: Option<&str>, name: &str) -> String {
        let unnamed = namespace.is_some_and(|ns| crate::sync::workspaces::split_namespace(ns).0.is_none());
        if !self.many_workspaces || !unnamed {
            return format!("{kind} {} not found upstream", describe(namespace, name));
        }
        let namespaces: Vec<String> = w.up_store.map_metadata(|o| {
            (o.metadata.name.as_deref() == Some(name)).then(|| o.metadata.namespace.clone()).flatten()
        });
        workspace_hint(kind, namespace.unwrap_or_default(), name, &namespaces)
    }
}

/// The answer to an explain that names no workspace although the upstream serves many: the
/// form to use, and the workspaces whose namespace `ns` holds the object (`qualified` are the
/// cached objects' `<logical cluster>/<namespace>` of that name).
pub fn workspace_hint(kind: &str, ns: &str, name: &str, qualified: &[String]) -> String {
    let mut clusters: Vec<&str> = qualified
        .iter()
        .filter_map(|q| match crate::sync::workspaces::split_namespace(q) {
            (Some(cluster), plain) if plain == ns => Some(cluster),
            _ => None,
        })
        .collect();
    clusters.sort_unstable();
    let found = if clusters.is_empty() {
        "no workspace has it".to_string()
    } else {
        format!("it is in workspace {}", clusters.join(", "))
    };
    format!(
        "the upstream serves many kcp workspaces: name the workspace, `downsync explain {kind} \
         <logical cluster>/{ns}/{name}`; {found}"
    )
}

/// Says more of the fields that no rule explains: one no upstream client asked for is the
/// downstream's (downsync keeps its value), and one another writer changed downstream names
/// that writer (its field manager), which is a drift.
pub fn name_writers(fields: &mut [Field], intent: &Intent, managers: &[Manager]) {
    for f in fields.iter_mut().filter(|f| f.by == "not synced" || f.by == "downstream cluster") {
        let owners = managers::owners_of(managers, &f.path, &["downsync"]);
        let who: Vec<String> = owners.iter().map(|m| m.describe()).collect();
        if intent.is_known() && f.upstream.is_some() && !intent.requested(&f.path) {
            f.by = "downstream cluster".into();
            f.why = "no upstream client asked for it (the upstream server filled it in), so downsync keeps the downstream value".into();
            if !who.is_empty() {
                f.why.push_str(&format!("; set downstream by {}", who.join(" and ")));
            }
        } else if !who.is_empty() && f.by == "not synced" {
            f.by = who.join(" and ");
            f.why = "changed downstream by this field manager: a drift, which the resource's drift policy reverts, keeps or reports".into();
        }
    }
}

fn describe(namespace: Option<&str>, name: &str) -> String {
    namespace.map_or_else(|| name.to_string(), |ns| format!("{ns}/{name}"))
}

impl Explainer for Controller {
    fn explain<'a>(
        &'a self,
        kind: &'a str,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(Controller::explain(self, kind, namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_svc(ip: &str, node_port: u64) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "a", "resourceVersion": "9"},
               "spec": {"clusterIP": ip, "ports": [{"port": 80, "nodePort": node_port}], "sessionAffinity": "None"}})
    }

    fn mk_step(who: &str, hook: &str, paths: &[&str]) -> RuleStep {
        RuleStep {
            who: who.into(),
            hook: hook.into(),
            decision: "apply".into(),
            paths: paths.iter().map(|p| (*p).to_string()).collect(),
        }
    }

    #[test]
    fn an_explain_without_a_workspace_names_the_workspaces_that_hold_the_object() {
        let cached = ["2abc9xyz/app".to_string(), "7other00/app".to_string(), "5third00/web".to_string()];
        let hint = workspace_hint("ConfigMap", "app", "cm", &cached);
        assert!(hint.contains("`downsync explain ConfigMap <logical cluster>/app/cm`"), "{hint}");
        assert!(hint.ends_with("it is in workspace 2abc9xyz, 7other00"), "{hint}");
        assert!(workspace_hint("ConfigMap", "gone", "cm", &cached).ends_with("no workspace has it"));
    }

    #[test]
    fn the_last_step_that_touched_a_field_is_named() {
        let mut up = mk_svc("10.0.0.5", 30080);
        up["spec"].as_object_mut().unwrap().remove("sessionAffinity");
        let down = mk_svc("10.96.0.12", 30080);
        let steps = [
            mk_step("plugin service@0123456789ab", "transform", &["/spec/clusterIP"]),
            mk_step("built-in preservation", "preservation", &[]),
            mk_step("plugin service@0123456789ab", "preserve", &["/spec/clusterIP"]),
        ];
        let fields = attribute(&up, &down, &steps, &[], false);
        let ip = fields.iter().find(|f| f.path == "/spec/clusterIP").unwrap();
        assert_eq!(ip.by, "plugin service@0123456789ab preserve");
        assert!(ip.why.starts_with("kept the downstream value"), "{}", ip.why);
        assert_eq!(ip.downstream, Some(json!("10.96.0.12")));
        let affinity = fields.iter().find(|f| f.path == "/spec/sessionAffinity").unwrap();
        assert_eq!(affinity.by, "downstream cluster");
        assert_eq!(fields.len(), 2, "{fields:?}");
    }

    #[test]
    fn ignored_and_unsynced_fields_say_so_and_secret_values_are_masked() {
        let up =
            json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}, "spec": {"replicas": 3}});
        let down =
            json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "b3RoZXI="}, "spec": {"replicas": 5}});
        let fields = attribute(&up, &down, &[], &["/spec/replicas".into()], true);
        let data = fields.iter().find(|f| f.path == "/data/k").unwrap();
        assert_eq!((data.upstream.clone(), data.downstream.clone()), (Some(json!("***")), Some(json!("***"))));
        assert_eq!(data.by, "not synced");
        assert_eq!(fields.iter().find(|f| f.path == "/spec/replicas").unwrap().by, "ignore-paths");
    }

    #[test]
    fn secret_annotations_are_masked_as_its_data() {
        let applied = r#"{"kind":"Secret","data":{"k":"c2VjcmV0"}}"#;
        let up = json!({"kind": "Secret", "metadata": {"name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied}}});
        let down = json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {"note": "downstream"}}});
        let fields = attribute(&up, &down, &[], &[], true);
        assert!(!fields.is_empty());
        for f in &fields {
            assert!(f.path.starts_with("/metadata/annotations"), "{f:?}");
            assert!(f.upstream.iter().chain(&f.downstream).all(|v| v == &json!("***")), "{f:?}");
        }
        // Another kind's annotations are shown.
        let fields = attribute(&up, &down, &[], &[], false);
        assert!(fields.iter().any(|f| f.upstream == Some(json!(applied))), "{fields:?}");
    }

    #[test]
    fn downsync_bookkeeping_is_not_a_difference() {
        let up = mk_svc("10.0.0.5", 1);
        let mut down = up.clone();
        down["metadata"]["annotations"] = json!({ownership::DESIRED_HASH_ANNOTATION: "h"});
        down["metadata"]["labels"] = json!({ownership::MANAGED_BY_LABEL: "downsync"});
        down["metadata"]["resourceVersion"] = json!("12");
        assert!(attribute(&up, &down, &[], &[], false).is_empty());
    }

    #[test]
    fn fields_no_rule_explains_name_their_writer() {
        let up = json!({"kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": 1, "paused": false}});
        let down = json!({"kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": 3, "paused": true}});
        let mut fields = attribute(&up, &down, &[], &[], false);
        let managers = vec![
            Manager {
                name: "hpa".into(),
                operation: "Update".into(),
                subresource: Some("scale".into()),
                fields: vec!["/spec/replicas".into()],
            },
            Manager {
                name: "kubectl-edit".into(),
                operation: "Update".into(),
                subresource: None,
                fields: vec!["/spec/paused".into()],
            },
        ];
        name_writers(&mut fields, &Intent::ServerSet(vec!["/spec/replicas".into()]), &managers);
        let by: Vec<(&str, &str)> = fields.iter().map(|f| (f.path.as_str(), f.by.as_str())).collect();
        assert_eq!(by, vec![("/spec/paused", "kubectl-edit (Update)"), ("/spec/replicas", "downstream cluster")]);
        assert!(
            fields[1].why.contains("no upstream client asked for it") && fields[1].why.contains("hpa (Update scale)")
        );
    }
}
