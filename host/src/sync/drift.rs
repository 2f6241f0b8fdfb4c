//! Drift: a field downsync enforces, changed downstream by someone else since downsync's last
//! write. Who changed it (from `managedFields`), and what the kind's policy says to do.
//!
//! The policy is per resource and per manager: `revert` (the default: upstream asked for the
//! field, so it wins), `keep` (that manager owns the field downstream, as an HPA owns
//! `replicas`: downsync stops enforcing it, silently), or `report` (keep it, and say so).

use serde::{Deserialize, Serialize};

use super::managers::{Manager, owners_of};

/// What happens to a drifted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftAction {
    /// Write the upstream value back, and report the drift.
    #[default]
    Revert,
    /// Leave the downstream value: the manager owns the field. Nothing is reported.
    Keep,
    /// Leave the downstream value and report the drift.
    Report,
}

impl DriftAction {
    /// A lowercase word for logs and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revert => "revert",
            Self::Keep => "keep",
            Self::Report => "report",
        }
    }
}

/// The drift policy of one resource (`resources[].drift`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftPolicy {
    /// What happens to a change by a manager not named below (or by an unknown one).
    pub action: DriftAction,
    /// Managers whose changes stay, silently: they own those fields downstream (an HPA's
    /// `replicas`). Their fields are left out of every write, also when upstream changes.
    pub keep: Vec<String>,
    /// Managers whose changes stay and are reported (a Warning Event, the metric).
    pub report: Vec<String>,
    /// Managers whose changes are reverted, when `action` is `keep` or `report`.
    pub revert: Vec<String>,
}

impl DriftPolicy {
    /// What to do with a change made by `manager`.
    pub fn action_for(&self, manager: &str) -> DriftAction {
        let named = |list: &[String]| list.iter().any(|m| m == manager);
        if named(&self.keep) {
            DriftAction::Keep
        } else if named(&self.report) {
            DriftAction::Report
        } else if named(&self.revert) {
            DriftAction::Revert
        } else {
            self.action
        }
    }

    /// Whether some manager's fields may be held back from a write: then the live object's
    /// `managedFields` are read before writing.
    pub fn holds_fields(&self) -> bool {
        self.action != DriftAction::Revert || !self.keep.is_empty() || !self.report.is_empty()
    }

    /// A manager named in two lists, or an empty name: the message names it.
    pub fn check(&self) -> Result<(), String> {
        let lists = [("keep", &self.keep), ("report", &self.report), ("revert", &self.revert)];
        for (i, (name, list)) in lists.iter().enumerate() {
            if let Some(empty) = list.iter().position(String::is_empty) {
                return Err(format!("{name}[{empty}] is empty; name a field manager, such as kubectl-edit"));
            }
            for (other, other_list) in &lists[i + 1..] {
                if let Some(m) = list.iter().find(|m| other_list.contains(m)) {
                    return Err(format!("manager {m:?} is in both {name} and {other}; name it once"));
                }
            }
        }
        Ok(())
    }
}

/// One field that drifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftedField {
    /// The field, as a JSON pointer.
    pub path: String,
    /// Who changed it (`kubectl-edit (Update)`); empty when nobody can tell.
    pub managers: Vec<String>,
    /// The manager names alone, for the metric; `unknown` when nobody can tell.
    #[serde(skip)]
    pub manager_names: Vec<String>,
    /// What the policy decided.
    pub action: DriftAction,
}

/// Classifies the drifted `paths` of a live object whose field managers are `managers`;
/// `own` are downsync's own manager names, never blamed. A field changed by several managers
/// is kept if any of them is kept, else reported if any is reported, else reverted.
pub fn classify(paths: &[String], managers: &[Manager], own: &[&str], policy: &DriftPolicy) -> Vec<DriftedField> {
    paths
        .iter()
        .map(|path| {
            let owners = owners_of(managers, path, own);
            let actions: Vec<DriftAction> = if owners.is_empty() {
                vec![policy.action]
            } else {
                owners.iter().map(|m| policy.action_for(&m.name)).collect()
            };
            let action = [DriftAction::Keep, DriftAction::Report]
                .into_iter()
                .find(|a| actions.contains(a))
                .unwrap_or(DriftAction::Revert);
            let mut names: Vec<String> = owners.iter().map(|m| m.name.clone()).collect();
            names.dedup();
            if names.is_empty() {
                names.push("unknown".into());
            }
            DriftedField {
                path: path.clone(),
                managers: owners.iter().map(|m| m.describe()).collect(),
                manager_names: names,
                action,
            }
        })
        .collect()
}

/// `/spec/replicas by hpa (Update scale), /data/x by kubectl-edit (Update)`, for messages.
pub fn describe(fields: &[DriftedField]) -> String {
    fields
        .iter()
        .map(|f| match f.managers.as_slice() {
            [] => format!("{} by an unknown writer", f.path),
            ms => format!("{} by {}", f.path, ms.join(" and ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_manager(name: &str, fields: &[&str]) -> Manager {
        Manager {
            name: name.into(),
            operation: "Update".into(),
            subresource: None,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn mk_policy(action: DriftAction, keep: &[&str], report: &[&str]) -> DriftPolicy {
        DriftPolicy {
            action,
            keep: keep.iter().map(|s| s.to_string()).collect(),
            report: report.iter().map(|s| s.to_string()).collect(),
            revert: Vec::new(),
        }
    }

    #[test]
    fn each_drifted_field_gets_its_managers_action() {
        let managers = vec![
            mk_manager("downsync", &["/spec/replicas", "/spec/template/spec/containers/0/image"]),
            mk_manager("hpa", &["/spec/replicas"]),
            mk_manager("kubectl-edit", &["/spec/template/spec/containers/0/image"]),
            mk_manager("ops", &["/spec/paused"]),
        ];
        let own = ["downsync"];
        let paths = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let table: [(DriftPolicy, &str, DriftAction, &str); 7] = [
            (DriftPolicy::default(), "/spec/replicas", DriftAction::Revert, "hpa"),
            (mk_policy(DriftAction::Revert, &["hpa"], &[]), "/spec/replicas", DriftAction::Keep, "hpa"),
            (
                mk_policy(DriftAction::Revert, &["hpa"], &[]),
                "/spec/template/spec/containers/0/image",
                DriftAction::Revert,
                "kubectl-edit",
            ),
            (
                mk_policy(DriftAction::Revert, &[], &["kubectl-edit"]),
                "/spec/template/spec/containers/0/image",
                DriftAction::Report,
                "kubectl-edit",
            ),
            (mk_policy(DriftAction::Report, &[], &[]), "/spec/paused", DriftAction::Report, "ops"),
            (mk_policy(DriftAction::Keep, &[], &[]), "/spec/minReadySeconds", DriftAction::Keep, "unknown"),
            (DriftPolicy::default(), "/spec/minReadySeconds", DriftAction::Revert, "unknown"),
        ];
        for (policy, path, want, manager) in table {
            let got = classify(&paths(&[path]), &managers, &own, &policy);
            assert_eq!(got[0].action, want, "{path} under {policy:?}");
            assert_eq!(got[0].manager_names, vec![manager.to_string()], "{path}");
        }
    }

    #[test]
    fn the_message_names_each_field_and_who_changed_it() {
        let managers = vec![mk_manager("kubectl-edit", &["/data/x"])];
        let got = classify(&["/data/x".into(), "/data/y".into()], &managers, &[], &DriftPolicy::default());
        assert_eq!(describe(&got), "/data/x by kubectl-edit (Update), /data/y by an unknown writer");
    }

    #[test]
    fn a_manager_in_two_lists_is_refused_by_name() {
        assert!(mk_policy(DriftAction::Revert, &["hpa"], &[]).check().is_ok());
        let twice = mk_policy(DriftAction::Revert, &["hpa"], &["hpa"]);
        assert_eq!(twice.check().unwrap_err(), "manager \"hpa\" is in both keep and report; name it once");
        assert!(mk_policy(DriftAction::Revert, &[""], &[]).check().unwrap_err().contains("keep[0] is empty"));
        assert!(!DriftPolicy::default().holds_fields());
        assert!(mk_policy(DriftAction::Revert, &["hpa"], &[]).holds_fields());
    }
}
