//! Feature gates, the Kubernetes way: each optional behaviour has a named gate with a stage
//! (Alpha, Beta, GA) and a default, set with `--feature-gates=Name=true,Other=false` or
//! `featureGates:` in the config file, refused when unknown, and exported as
//! `downsync_feature_enabled{name}`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How mature a gated behaviour is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Off by default; may change or go.
    Alpha,
    /// On by default; can be turned off.
    Beta,
    /// Always on; the gate stays only so that configs naming it keep working.
    Ga,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Alpha => "Alpha",
            Self::Beta => "Beta",
            Self::Ga => "GA",
        }
    }
}

/// One gate.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Its name, as in `--feature-gates`.
    pub name: &'static str,
    /// Its stage.
    pub stage: Stage,
    /// Whether it is on when nobody says.
    pub default: bool,
    /// What it turns on.
    pub description: &'static str,
}

/// Only the fields upstream clients asked for are enforced downstream: what the upstream
/// server filled in (read from `managedFields`) is left to the downstream server and its
/// writers. Off: every field of the upstream object is enforced.
pub const CLIENT_INTENT: &str = "ClientIntent";
/// A 0.2.0 plugin is sent only the fields its `reads` names. Off: it is sent whole objects.
pub const INPUT_PROJECTION: &str = "InputProjection";
/// A new plugin version runs on Winch's code at once, and on Cranelift's once a background
/// thread has compiled it. Off: Cranelift compiles before the version is used.
pub const TIERED_COMPILATION: &str = "TieredCompilation";
/// `plugins.<name>.rollout.mode` `shadow` or `manual`: a new version runs beside the active one before use.
pub const SHADOW_ROLLOUT: &str = "ShadowRollout";
/// `ha.shards` above 1: upstream namespaces split across replicas, a Lease each.
pub const SHARDING: &str = "Sharding";
/// Watches list by streaming (`sendInitialEvents`) where the server offers it, as client-go's
/// gate of the same name. Off: in pages, as before.
pub const WATCH_LIST_CLIENT: &str = "WatchListClient";
/// `plugins.<name>.source`: plugins pulled from OCI registries, verified, followed by tag.
pub const REGISTRY_SOURCES: &str = "RegistrySources";

/// Every gate downsync knows.
pub const GATES: &[Gate] = &[
    Gate {
        name: CLIENT_INTENT,
        stage: Stage::Beta,
        default: true,
        description: "enforce only the fields upstream clients asked for (managedFields); leave server-set fields to the downstream",
    },
    Gate {
        name: INPUT_PROJECTION,
        stage: Stage::Beta,
        default: true,
        description: "send a 0.2.0 plugin only the fields its `reads` names",
    },
    Gate {
        name: REGISTRY_SOURCES,
        stage: Stage::Beta,
        default: true,
        description: "allow `plugins.<name>.source`: plugins pulled from OCI registries, verified, and followed by tag",
    },
    Gate {
        name: SHADOW_ROLLOUT,
        stage: Stage::Beta,
        default: true,
        description: "allow `rollout.mode: shadow` and `manual`: a new plugin version runs beside the active one before it is used",
    },
    Gate {
        name: SHARDING,
        stage: Stage::Beta,
        default: true,
        description: "allow `ha.shards` above 1: upstream namespaces split across replicas, a Lease each",
    },
    Gate {
        name: TIERED_COMPILATION,
        stage: Stage::Beta,
        default: true,
        description: "run a new plugin version on Winch's code while Cranelift compiles it in the background",
    },
    Gate {
        name: WATCH_LIST_CLIENT,
        stage: Stage::Beta,
        default: true,
        description: "list by streaming (a watch with sendInitialEvents) where the API server offers it, in pages where it refuses; off: always in pages",
    },
];

/// A gate setting that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No such gate.
    #[error("unknown feature gate {name:?}; known gates: {known}")]
    Unknown {
        /// The name given.
        name: String,
        /// The gates there are.
        known: String,
    },
    /// `Name=value` is not what was given.
    #[error("{given:?} is not Name=true or Name=false")]
    Syntax {
        /// What was given.
        given: String,
    },
    /// A GA gate cannot be turned off.
    #[error("feature gate {name} is GA and cannot be turned off")]
    Locked {
        /// The gate.
        name: String,
    },
}

fn gate(name: &str) -> Result<&'static Gate, Error> {
    GATES.iter().find(|g| g.name == name).ok_or_else(|| Error::Unknown {
        name: name.to_string(),
        known: GATES.iter().map(|g| g.name).collect::<Vec<_>>().join(", "),
    })
}

/// Checks settings by gate name (from the config file or the flag).
pub fn validate(settings: &BTreeMap<String, bool>) -> Result<(), Error> {
    for (name, on) in settings {
        let g = gate(name)?;
        if g.stage == Stage::Ga && !on {
            return Err(Error::Locked { name: name.clone() });
        }
    }
    Ok(())
}

/// Parses `Name=true,Other=false` into settings, refusing unknown gates.
pub fn parse(flag: &str) -> Result<BTreeMap<String, bool>, Error> {
    let mut out = BTreeMap::new();
    for part in flag.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| Error::Syntax { given: part.to_string() })?;
        let on = match value.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(Error::Syntax { given: part.to_string() }),
        };
        gate(name.trim())?;
        out.insert(name.trim().to_string(), on);
    }
    validate(&out)?;
    Ok(out)
}

/// Whether gate `name` is on under `settings`. An unknown name is off (settings are validated
/// when read, so only a programming error asks for one).
pub fn enabled(settings: &BTreeMap<String, bool>, name: &str) -> bool {
    GATES
        .iter()
        .find(|g| g.name == name)
        .is_some_and(|g| g.stage == Stage::Ga || *settings.get(name).unwrap_or(&g.default))
}

/// The gates for `--help`.
pub fn help() -> String {
    let mut s = String::from("Feature gates, as Name=true,Other=false. Known gates:\n");
    for g in GATES {
        s.push_str(&format!(
            "  {}={} ({}, default {}): {}\n",
            g.name,
            g.default,
            g.stage.as_str(),
            g.default,
            g.description
        ));
    }
    s
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: &'static str,
}

/// Registers `downsync_feature_enabled{name}`: 1 for each gate that is on, 0 for off.
pub fn register(settings: &BTreeMap<String, bool>, registry: &mut Registry) {
    let family = Family::<NameLabels, Gauge<i64, AtomicI64>>::default();
    for g in GATES {
        family.get_or_create(&NameLabels { name: g.name }).set(i64::from(enabled(settings, g.name)));
    }
    registry.register("downsync_feature_enabled", "Whether each feature gate is on (1) or off (0)", family);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_with_defaults_and_refuse_unknown_names_and_bad_values() {
        let s = parse("Sharding=false, ClientIntent=true").unwrap();
        assert!(!enabled(&s, SHARDING));
        assert!(enabled(&s, CLIENT_INTENT));
        assert!(enabled(&s, SHADOW_ROLLOUT), "unset: the default");
        assert!(matches!(parse("NoSuchGate=true"), Err(Error::Unknown { .. })));
        let err = parse("NoSuchGate=true").unwrap_err().to_string();
        assert!(err.contains("NoSuchGate") && err.contains(SHARDING), "{err}");
        assert!(matches!(parse("Sharding"), Err(Error::Syntax { .. })));
        assert!(matches!(parse("Sharding=yes"), Err(Error::Syntax { .. })));
        assert_eq!(parse("").unwrap(), BTreeMap::new());
    }

    #[test]
    fn the_help_lists_every_gate_with_stage_and_default() {
        let h = help();
        for g in GATES {
            assert!(h.contains(g.name) && h.contains(g.stage.as_str()), "{h}");
        }
    }

    #[test]
    fn every_gate_is_exported() {
        let mut registry = Registry::default();
        register(&parse("Sharding=false").unwrap(), &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"downsync_feature_enabled{name="Sharding"} 0"#), "{text}");
        for g in GATES.iter().filter(|g| g.name != SHARDING) {
            assert!(text.contains(&format!(r#"downsync_feature_enabled{{name="{}"}} 1"#, g.name)), "{text}");
        }
    }
}
