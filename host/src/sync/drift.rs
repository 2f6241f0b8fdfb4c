//! Drift: a field downsync enforces, changed downstream by someone else since downsync's last
//! write. Who changed it (from `managedFields`), and what the kind's policy says to do.
//!
//! The policy is per resource and per manager: `revert` (the default: upstream asked for the
//! field, so it wins), `keep` (that manager owns the field downstream, as an HPA owns
//! `replicas`: downsync stops enforcing it, silently), or `report` (keep it, and say so).

use std::collections::BTreeMap;

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
    /// What happens to the changes of one field manager, by its name: `keep` (it owns those
    /// fields downstream, as the HPA controller owns a Deployment's `replicas`: they are left
    /// out of every write, also when upstream changes), `report` (they stay, with a Warning
    /// Event and the metric) or `revert`. `"*"` is every manager not named, and an unknown
    /// writer: `revert` unless given.
    pub managers: BTreeMap<String, DriftAction>,
}

/// The `managers` entry for every manager not named there.
pub const ANY_MANAGER: &str = "*";

impl DriftPolicy {
    /// What to do with a change made by `manager`.
    pub fn action_for(&self, manager: &str) -> DriftAction {
        self.managers.get(manager).copied().unwrap_or_else(|| self.otherwise())
    }

    /// What to do with a change by a manager not named, or by an unknown writer.
    fn otherwise(&self) -> DriftAction {
        self.managers.get(ANY_MANAGER).copied().unwrap_or_default()
    }

    /// Whether some manager's fields may be held back from a write: then the live object's
    /// `managedFields` are read before writing.
    pub fn holds_fields(&self) -> bool {
        self.managers.values().any(|a| *a != DriftAction::Revert)
    }

    /// An empty manager name: the message says what to write.
    pub fn check(&self) -> Result<(), String> {
        if self.managers.keys().any(String::is_empty) {
            return Err("an empty manager name; name a field manager, such as kubectl-edit".into());
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
                vec![policy.otherwise()]
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
        let named = |names: &[&str], a: DriftAction| names.iter().map(move |m| (m.to_string(), a)).collect::<Vec<_>>();
        let managers = named(keep, DriftAction::Keep).into_iter().chain(named(report, DriftAction::Report));
        DriftPolicy { managers: managers.chain([(ANY_MANAGER.to_string(), action)]).collect() }
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
    fn the_managers_map_parses_and_an_empty_name_is_refused() {
        let p: DriftPolicy =
            serde_yaml_ng::from_str("managers: {'*': report, hpa: keep, ops: revert}").expect("policy");
        assert_eq!(
            (p.action_for("hpa"), p.action_for("ops"), p.action_for("other")),
            (DriftAction::Keep, DriftAction::Revert, DriftAction::Report)
        );
        assert!(mk_policy(DriftAction::Revert, &["hpa"], &[]).check().is_ok());
        assert!(mk_policy(DriftAction::Revert, &[""], &[]).check().unwrap_err().contains("empty manager name"));
        let bad = serde_yaml_ng::from_str::<DriftPolicy>("managers: {hpa: ignore}").map(|_| ()).unwrap_err();
        assert!(bad.to_string().contains("ignore"), "{bad}");
        assert!(!DriftPolicy::default().holds_fields());
        assert!(mk_policy(DriftAction::Revert, &["hpa"], &[]).holds_fields());
        assert!(mk_policy(DriftAction::Report, &[], &[]).holds_fields(), "'*': report holds fields");
        assert!(!mk_policy(DriftAction::Revert, &[], &[]).holds_fields(), "'*': revert is the default");
        let gone = serde_yaml_ng::from_str::<DriftPolicy>("action: keep").map(|_| ()).unwrap_err();
        assert!(gone.to_string().contains("action"), "{gone}");
    }
}
