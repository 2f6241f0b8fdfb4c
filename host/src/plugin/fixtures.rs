//! Plugin fixtures: `<case>/{existing,desired,expected}.yaml` folders, run through a loaded plugin.
//!
//! A case has `desired.yaml`, optionally `existing.yaml` (the live downstream object), and
//! either `expected.yaml` (the object to write) or `decision.yaml` (`decision: Recreate|Skip`,
//! optional `reason:` substring). The runner calls `transform`, then `preserve` when there is
//! an existing object, checks the host contract, and checks that preserving the result again
//! changes nothing. `downsync plugin test` and the hot-reload checks both use it.
//!
//! Each file is read only when it holds at most [`MAX_FIXTURE_FILE_BYTES`]; in the plugins
//! folder (the hot-reload checks), only through links that stay inside it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::component::Plugin;
use super::contract;
use super::error::{Error, Result};
use super::files::{Folder, MAX_FIXTURE_FILE_BYTES, read_text_bounded};
use super::types::Decision;
use super::types::group_kind;
use crate::sync::intent::Intent;

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// This object is written.
    Object(Value),
    /// The object is recreated; the reason contains this text, if given.
    Recreate(Option<String>),
    /// The object is skipped; the reason contains this text, if given.
    Skip(Option<String>),
}

/// One fixture case.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The case folder's name.
    pub name: String,
    /// The live downstream object, if any.
    pub existing: Option<Value>,
    /// The desired object.
    pub desired: Value,
    /// What must come out.
    pub expected: Expected,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionFile {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

/// What sets the largest fixture file, for messages.
const FIXTURE_LIMIT: &str = "the limit of a fixture file";

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path, folder: Option<&Folder>) -> Result<Option<T>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Fixture { path: path.to_path_buf(), message: e.to_string() }),
        Ok(_) => {}
    }
    if let Some(folder) = folder {
        folder.resolve(path)?;
    }
    let text = match read_text_bounded(path, MAX_FIXTURE_FILE_BYTES, FIXTURE_LIMIT) {
        Ok(t) => t,
        Err(Error::Read { source, .. }) => {
            return Err(Error::Fixture { path: path.to_path_buf(), message: source.to_string() });
        }
        Err(e) => return Err(e),
    };
    serde_yaml_ng::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Fixture { path: path.to_path_buf(), message: e.to_string() })
}

/// Loads one case folder.
pub fn load_case(dir: &Path) -> Result<Fixture> {
    load_case_in(dir, None)
}

/// Loads one case folder; with `folder`, every file must lie inside it, links resolved.
fn load_case_in(dir: &Path, folder: Option<&Folder>) -> Result<Fixture> {
    let read_yaml = |path: &Path| read_yaml(path, folder);
    let missing = |file: &str| Error::Fixture { path: dir.join(file), message: "missing".into() };
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let desired: Value = read_yaml(&dir.join("desired.yaml"))?.ok_or_else(|| missing("desired.yaml"))?;
    let existing: Option<Value> = read_yaml(&dir.join("existing.yaml"))?;
    let expected =
        match (read_yaml(&dir.join("expected.yaml"))?, read_yaml_decision(&dir.join("decision.yaml"), folder)?) {
            (Some(obj), None) => Expected::Object(obj),
            (None, Some(d)) => match d.decision.to_ascii_lowercase().as_str() {
                "recreate" => Expected::Recreate(d.reason),
                "skip" => Expected::Skip(d.reason),
                _ => {
                    return Err(Error::Fixture {
                        path: dir.join("decision.yaml"),
                        message: format!("decision {:?} is not Recreate or Skip", d.decision),
                    });
                }
            },
            (Some(_), Some(_)) => {
                return Err(Error::Fixture {
                    path: dir.to_path_buf(),
                    message: "has both expected.yaml and decision.yaml".into(),
                });
            }
            (None, None) => return Err(missing("expected.yaml (or decision.yaml)")),
        };
    Ok(Fixture { name, existing, desired, expected })
}

/// `decision.yaml`, typed.
fn read_yaml_decision(path: &Path, folder: Option<&Folder>) -> Result<Option<DecisionFile>> {
    read_yaml(path, folder)
}

/// Loads every case folder of `dir`, sorted by name. Files and hidden entries are ignored.
pub fn load_dir(dir: &Path) -> Result<Vec<Fixture>> {
    load_dir_in(dir, None)
}

/// [`load_dir`] for a fixtures folder in the plugins folder: `dir`, its cases and their files
/// must lie inside `folder`, links resolved (a ConfigMap's `..data` links do).
pub(super) fn load_dir_within(dir: &Path, folder: &Folder) -> Result<Vec<Fixture>> {
    folder.resolve(dir)?;
    load_dir_in(dir, Some(folder))
}

fn load_dir_in(dir: &Path, folder: Option<&Folder>) -> Result<Vec<Fixture>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Fixture { path: dir.to_path_buf(), message: e.to_string() })?;
    let mut cases: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    cases.sort();
    cases
        .iter()
        .map(|c| {
            if let Some(folder) = folder {
                folder.resolve(c)?;
            }
            load_case_in(c, folder)
        })
        .collect()
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The case name.
    pub name: String,
    /// Why it failed (with a readable diff), or None when it passed.
    pub failure: Option<String>,
}

/// Runs every fixture through `plugin`.
pub fn run_all(plugin: &Plugin, fixtures: &[Fixture]) -> Vec<Outcome> {
    fixtures.iter().map(|f| Outcome { name: f.name.clone(), failure: run(plugin, f).err() }).collect()
}

/// Runs one fixture; `Err` carries a readable explanation.
pub fn run(plugin: &Plugin, fixture: &Fixture) -> std::result::Result<(), String> {
    let (group, kind) = group_kind(&fixture.desired);
    if !plugin.info().handles(&group, &kind) {
        let gk = if group.is_empty() { kind } else { format!("{kind}.{group}") };
        return Err(format!("plugin {} does not handle {gk}", plugin.name()));
    }
    // As the syncer does: the intent is read from the upstream object's managedFields (a
    // fixture may carry them, as `kubectl get --show-managed-fields` prints them), which are
    // then dropped.
    let intent = Intent::of(&fixture.desired);
    let mut desired = fixture.desired.clone();
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let transformed = plugin.transform(&desired, &intent).map_err(|e| e.to_string())?.value;
    contract::check(plugin.info(), "transform", &desired, &transformed).map_err(|e| e.to_string())?;
    let decision = match &fixture.existing {
        None => Decision::Apply(transformed),
        Some(existing) => preserve_checked(plugin, existing, &transformed, &intent)?,
    };
    match (&fixture.expected, &decision) {
        (Expected::Object(want), Decision::Apply(got)) => {
            if want != got {
                return Err(format!("the written object differs from expected.yaml:\n{}", render_diff(want, got)));
            }
            if let Some(existing) = &fixture.existing {
                match preserve_checked(plugin, existing, got, &intent)? {
                    Decision::Apply(again) if &again == got => {}
                    Decision::Apply(again) => {
                        return Err(format!(
                            "preserve is not idempotent; applying it twice gives:\n{}",
                            render_diff(got, &again)
                        ));
                    }
                    other => return Err(format!("preserve is not idempotent; applying it twice gives {other:?}")),
                }
            }
            Ok(())
        }
        (Expected::Recreate(want), Decision::Recreate(reason)) | (Expected::Skip(want), Decision::Skip(reason)) => {
            match want {
                Some(w) if !reason.contains(w.as_str()) => Err(format!("the reason {reason:?} does not contain {w:?}")),
                _ => Ok(()),
            }
        }
        (want, got) => Err(format!("expected {}, got {}", expected_label(want), decision_label(got))),
    }
}

fn preserve_checked(
    plugin: &Plugin,
    existing: &Value,
    desired: &Value,
    intent: &Intent,
) -> std::result::Result<Decision, String> {
    let decision = plugin.preserve(existing, desired, intent).map_err(|e| e.to_string())?.value;
    if let Decision::Apply(out) = &decision {
        contract::check(plugin.info(), "preserve", desired, out).map_err(|e| e.to_string())?;
    }
    Ok(decision)
}

fn expected_label(e: &Expected) -> String {
    match e {
        Expected::Object(_) => "an object to apply".into(),
        Expected::Recreate(_) => "recreate".into(),
        Expected::Skip(_) => "skip".into(),
    }
}

fn decision_label(d: &Decision) -> String {
    match d {
        Decision::Apply(v) => format!("apply of {v}"),
        Decision::Recreate(r) => format!("recreate ({r})"),
        Decision::Skip(r) => format!("skip ({r})"),
    }
}

/// One line per difference between `want` and `got`: `+` only in got, `-` only in want, `~` changed.
pub fn render_diff(want: &Value, got: &Value) -> String {
    let mut out = String::new();
    for op in json_patch::diff(want, got).0 {
        let path = op.path().as_str().to_string();
        let line = match op {
            json_patch::PatchOperation::Add(add) => format!("  + {path}: {}", add.value),
            json_patch::PatchOperation::Remove(_) => {
                format!("  - {path}: {}", want.pointer(&path).map_or_else(|| "?".into(), Value::to_string))
            }
            json_patch::PatchOperation::Replace(rep) => format!(
                "  ~ {path}: expected {}, got {}",
                want.pointer(&path).map_or_else(|| "nothing".into(), Value::to_string),
                rep.value
            ),
            other => format!("  ? {other:?}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_case(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("downsync-fixtures-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cases_load_sorted_with_objects_or_decisions() {
        let root = scratch("load");
        mk_case(
            &root,
            "b-skip",
            &[("desired.yaml", "kind: ConfigMap\n"), ("decision.yaml", "decision: Skip\nreason: immutable\n")],
        );
        mk_case(
            &root,
            "a-apply",
            &[
                ("desired.yaml", "kind: ConfigMap\n"),
                ("existing.yaml", "kind: ConfigMap\n"),
                ("expected.yaml", "kind: ConfigMap\ndata: {a: b}\n"),
            ],
        );
        std::fs::write(root.join("README"), "not a case").unwrap();
        let cases = load_dir(&root).unwrap();
        assert_eq!(cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a-apply", "b-skip"]);
        assert_eq!(cases[0].expected, Expected::Object(json!({"kind": "ConfigMap", "data": {"a": "b"}})));
        assert!(cases[0].existing.is_some());
        assert_eq!(cases[1].expected, Expected::Skip(Some("immutable".into())));
        assert_eq!(cases[1].existing, None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_case_without_an_expectation_or_with_a_bad_decision_is_an_error() {
        let root = scratch("bad");
        let none = mk_case(&root, "none", &[("desired.yaml", "kind: ConfigMap\n")]);
        assert!(matches!(load_case(&none), Err(Error::Fixture { .. })));
        let bad = mk_case(&root, "bad", &[("desired.yaml", "kind: X\n"), ("decision.yaml", "decision: Explode\n")]);
        let err = load_case(&bad).unwrap_err();
        assert!(err.to_string().contains("Explode"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn render_diff_names_each_differing_path() {
        let want = json!({"spec": {"clusterIP": "10.0.0.1", "type": "ClusterIP"}});
        let got = json!({"spec": {"clusterIP": "10.0.0.2", "extra": 1}});
        let text = render_diff(&want, &got);
        assert!(text.contains("~ /spec/clusterIP: expected \"10.0.0.1\", got \"10.0.0.2\""), "{text}");
        assert!(text.contains("+ /spec/extra: 1"), "{text}");
        assert!(text.contains("- /spec/type: \"ClusterIP\""), "{text}");
    }
}
