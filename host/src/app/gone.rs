//! Settings that are gone (issue 29: at most 30 settings): a config file that still names one is
//! refused with what replaced it, not with the parser's bare "unknown field".

use serde_yaml_ng::Value;

/// A removed setting: its path as the reference writes it (`<name>` any map key, `[]` any list
/// entry) and what took its place.
struct Gone {
    path: &'static str,
    instead: &'static str,
}

/// Every removed setting, with what a user writes instead.
const GONE: &[Gone] = &[
    Gone {
        path: "resources[].drift.keep",
        instead: "managers are named in one map now: `drift: {managers: {NAME: keep}}`",
    },
    Gone {
        path: "resources[].drift.report",
        instead: "managers are named in one map now: `drift: {managers: {NAME: report}}`",
    },
    Gone {
        path: "resources[].drift.revert",
        instead: "managers are named in one map now: `drift: {managers: {NAME: revert}}`",
    },
    Gone {
        path: "engine.deadlineMs",
        instead: "the wall-clock backstop is fixed at 1 s per call; `engine.fuel` is the limit to set",
    },
    Gone {
        path: "plugins.<name>.instances",
        instead: "a plugin that declares itself stateless (version `+stateless`, the SDKs' `.stateless()`) \
                  runs in reused instances, any other in a fresh instance per call",
    },
    Gone {
        path: "plugins.<name>.rollout.shadow",
        instead: "write `rollout: {mode: shadow}` (promoted after a clean window) or `rollout: {mode: manual}` \
                  (promoted by `downsync plugin promote`); `mode: direct`, the default, is no shadow",
    },
    Gone {
        path: "plugins.<name>.rollout.promote",
        instead: "`rollout: {mode: manual}` runs a new version in shadow until `downsync plugin promote`; \
                  `mode: shadow` promotes it after a clean window",
    },
    Gone {
        path: "plugins.<name>.rollout.windowSeconds",
        instead: "the trial window is 100 calls of the new version, or 5 minutes with at least one call, \
                  whichever comes first",
    },
    Gone {
        path: "orphanGraceSeconds",
        instead: "owned objects found without an upstream object at startup are deleted after a fixed 30 s",
    },
    Gone {
        path: "metricsCertDir",
        instead: "mount the certificate's Secret (`tls.crt`, `tls.key`) at /etc/downsync/tls; without one \
                  there, a self-signed certificate is made at each start",
    },
    Gone {
        path: "ha.enabled",
        instead: "HA is on when `ha` is given (`ha: {}`, or `ha: {shards: N}`) and off when it is left out",
    },
    Gone {
        path: "resyncSeconds",
        instead: "every object is looked at again every 10 minutes without an event; both clusters are \
                  watched, so changes arrive at once and this only catches an event a watch lost",
    },
    Gone {
        path: "keepNamespaces",
        instead: "the downstream RBAC decides: without `delete` on namespaces, the namespaces downsync \
                  created are kept; to keep one, remove the label `downsync.dev/managed-by` from it",
    },
    Gone {
        path: "plugins.<name>.digest",
        instead: "pin a version by its digest in its source: `source: oci://REGISTRY/REPO@sha256:DIGEST` \
                  (verified on every pull); a file in the plugins folder is trusted as whoever may write \
                  the folder, and `downsync plugin status` shows its sha256",
    },
    Gone {
        path: "registry.credentials",
        instead: "credentials come from docker's own file, `$DOCKER_CONFIG/config.json` (else \
                  `~/.docker/config.json`, where `docker login` writes): in a pod, mount the image pull \
                  Secret's `.dockerconfigjson` as `config.json` and set `DOCKER_CONFIG` to its folder",
    },
    Gone {
        path: "plugins.<name>.rollout.windowCalls",
        instead: "the trial window is 100 calls of the new version, or 5 minutes with at least one call, \
                  whichever comes first; a version whose calls fail is rolled back before either",
    },
    Gone {
        path: "resources[].drift.action",
        instead: "managers not named are the entry `\"*\"` of the managers map now: \
                  `drift: {managers: {\"*\": report}}`",
    },
    Gone {
        path: "sync.ownership.identity",
        instead: "every instance stamps `downsync.dev/managed-by: downsync`, and instances are told apart by \
                  `sync.ownership.target` (give each upstream its own); objects stamped by another identity \
                  are not owned: `sync.ownership.adopt: true` takes them over",
    },
    Gone {
        path: "excludeNamespaces",
        instead: "name it in `namespaces` with a leading `!`: `namespaces: ['!NAME']` syncs all but NAME \
                  (and the system namespaces), `namespaces: [a, b, '!b']` only a",
    },
    Gone {
        path: "upstreamFinalizer",
        instead: "list what downsync may write upstream: `upstreamWrites: [finalizer]` (with the status: \
                  `[finalizer, status]`)",
    },
    Gone {
        path: "statusUpsync",
        instead: "list what downsync may write upstream: `upstreamWrites: [status]` (with the finalizer: \
                  `[finalizer, status]`)",
    },
    Gone {
        path: "engine.memoryBytes",
        instead: "a rule call gets half the memory downsync may use shared by its workers, between 64 MiB and \
                  1 GiB: raise the container's memory limit (or lower `workers`) for a rule that needs more; \
                  `downsync run` logs the cap at start",
    },
];

/// Every removed setting, as the reference writes its path, with what replaced it.
pub(super) fn removed() -> impl Iterator<Item = (&'static str, &'static str)> {
    GONE.iter().map(|g| (g.path, g.instead))
}

/// The first removed setting `config` (the whole file, parsed) names: its path as written
/// (`resources[2].drift.keep`, `plugins.stamp.instances`) and what replaced it.
pub(super) fn find(config: &Value) -> Option<(String, &'static str)> {
    GONE.iter().find_map(|g| {
        let segments: Vec<&str> = g.path.split('.').collect();
        at(config, &segments, String::new()).map(|path| (path, g.instead))
    })
}

/// Where `segments` lead in `value`, as a concrete path after `prefix`.
fn at(value: &Value, segments: &[&str], prefix: String) -> Option<String> {
    let Some((first, rest)) = segments.split_first() else { return Some(prefix) };
    let dot = if prefix.is_empty() { "" } else { "." };
    let map = value.as_mapping()?;
    if *first == "<name>" {
        return map.iter().find_map(|(k, v)| at(v, rest, format!("{prefix}{dot}{}", k.as_str()?)));
    }
    let (key, list) = match first.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (*first, false),
    };
    let inner = map.get(key)?;
    if !list {
        return at(inner, rest, format!("{prefix}{dot}{key}"));
    }
    inner.as_sequence()?.iter().enumerate().find_map(|(i, v)| at(v, rest, format!("{prefix}{dot}{key}[{i}]")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(yaml: &str) -> Option<(String, &'static str)> {
        find(&serde_yaml_ng::from_str(yaml).expect("yaml"))
    }

    #[test]
    fn a_removed_setting_is_found_by_its_concrete_path() {
        assert_eq!(gone("ha: {enabled: true}").map(|g| g.0).as_deref(), Some("ha.enabled"));
        let drift = "resources: [{kind: A}, {kind: B, drift: {report: [x]}}]";
        assert_eq!(gone(drift).map(|g| g.0).as_deref(), Some("resources[1].drift.report"));
        let plugin = "plugins: {a: {digest: x}, stamp: {instances: reused}}";
        assert_eq!(gone(plugin).map(|g| g.0).as_deref(), Some("plugins.stamp.instances"));
        assert_eq!(
            gone("plugins: {b: {rollout: {windowSeconds: 3}}}").map(|g| g.0).as_deref(),
            Some("plugins.b.rollout.windowSeconds")
        );
        assert_eq!(gone("statusUpsync: true").map(|g| g.0).as_deref(), Some("statusUpsync"));
        for kept in [
            "ha: {shards: 2}",
            "resources: [{kind: A, drift: {managers: {hpa: keep}}}]",
            "workers: 2",
            "plugins: {a: {rollout: {mode: shadow}}}",
            "upstreamWrites: [status]",
        ] {
            assert_eq!(gone(kept), None, "{kept}");
        }
    }

    #[test]
    fn every_removed_setting_is_no_setting_of_the_reference() {
        let settings: Vec<String> = super::super::reference::settings().into_iter().map(|s| s.path).collect();
        for g in GONE {
            assert!(!settings.iter().any(|s| s == g.path), "{} is gone but still a setting", g.path);
        }
    }
}
