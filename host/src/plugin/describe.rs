//! Checks of what a plugin's `describe` said, before anything trusts it: its name, version,
//! kinds, scope and reads, each bounded.

use super::dispatch::RawInfo;
use super::error::{Error, Result};
use super::output::bounded;
use super::types::{Hooks, KindPattern, PluginInfo};

/// The most kind patterns and scope patterns `describe` may list, and the longest of each.
const MAX_DESCRIBE_ENTRIES: usize = 256;
const MAX_DESCRIBE_FIELD_BYTES: usize = 1024;

pub(super) fn check_describe(label: &str, raw: RawInfo) -> Result<PluginInfo> {
    let bad = |message: String| Error::Describe { plugin: label.to_string(), message };
    // Shown in messages: what a plugin says is bounded before it reaches a log line.
    let show = |text: &str| format!("{:?}", bounded(text, 100));
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(bad(format!("name {} must be 1-63 lowercase letters, digits or '-'", show(&raw.name))));
    }
    if raw.version.is_empty() || raw.version.len() > 64 || raw.version.chars().any(char::is_control) {
        return Err(bad(format!("version {} must be 1-64 printable characters", show(&raw.version))));
    }
    if raw.kinds.is_empty() {
        return Err(bad("it handles no kinds".into()));
    }
    if raw.kinds.len() > MAX_DESCRIBE_ENTRIES
        || raw.scope.len() > MAX_DESCRIBE_ENTRIES
        || raw.reads.len() > MAX_DESCRIBE_ENTRIES
    {
        return Err(bad(format!(
            "{} kind patterns, {} scope patterns and {} reads; the limit is {MAX_DESCRIBE_ENTRIES} each",
            raw.kinds.len(),
            raw.scope.len(),
            raw.reads.len()
        )));
    }
    for (group, kind) in &raw.kinds {
        if kind.is_empty() {
            return Err(bad(format!("kind pattern with group {} has an empty kind", show(group))));
        }
        if kind.len() + group.len() > MAX_DESCRIBE_FIELD_BYTES {
            return Err(bad(format!("kind pattern {}/{} is too long", show(group), show(kind))));
        }
    }
    if raw.hooks == (Hooks { transform: false, preserve: false, ignore_paths: false }) {
        return Err(bad("it lists no hooks (transform, preserve, ignore-paths)".into()));
    }
    check_reads(&raw.reads, &raw.scope).map_err(bad)?;
    for s in &raw.scope {
        if !s.starts_with('/') || s == "/" || s.len() > MAX_DESCRIBE_FIELD_BYTES {
            return Err(bad(format!(
                "scope {} is not a JSON pointer below the root of at most {MAX_DESCRIBE_FIELD_BYTES} bytes",
                show(s)
            )));
        }
    }
    Ok(PluginInfo {
        name: raw.name,
        version: raw.version,
        kinds: raw.kinds.into_iter().map(|(group, kind)| KindPattern { group, kind }).collect(),
        scope: raw.scope,
        wit: raw.wit,
        hooks: raw.hooks,
        reads: raw.reads,
    })
}

/// Reads must be plain JSON pointers below the root (no wildcards) or `/` (the whole object),
/// and, when there are any, every scope pattern must lie inside one: a plugin cannot write what
/// it is not sent.
fn check_reads(reads: &[String], scope: &[String]) -> std::result::Result<(), String> {
    for r in reads {
        let segments = crate::sync::pointer::parse(r).ok().filter(|s| !s.is_empty());
        let Some(segments) = segments.filter(|_| r.len() <= MAX_DESCRIBE_FIELD_BYTES) else {
            return Err(format!(
                "read {:?} is not a JSON pointer below the root of at most {MAX_DESCRIBE_FIELD_BYTES} bytes",
                bounded(r, 100)
            ));
        };
        if segments.iter().any(|s| s == crate::sync::pointer::WILDCARD) {
            return Err(format!("read {:?} has a wildcard; reads are plain JSON pointers", bounded(r, 100)));
        }
    }
    if reads.is_empty() {
        return Ok(());
    }
    for pattern in scope {
        let Ok(pat) = crate::sync::pointer::parse(pattern) else { continue };
        let inside = reads
            .iter()
            .filter_map(|r| crate::sync::pointer::parse(super::projection::read_pointer(r)).ok())
            .any(|r| r.len() <= pat.len() && r.iter().zip(&pat).all(|(a, b)| a == b));
        if !inside {
            return Err(format!(
                "scope {:?} is outside every read {:?}: the plugin would never be sent what it writes",
                bounded(pattern, 100),
                reads
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::types::WitVersion;

    fn mk_raw(name: &str, version: &str, kinds: usize, scope: &[&str]) -> RawInfo {
        RawInfo {
            name: name.into(),
            version: version.into(),
            kinds: (0..kinds).map(|i| (String::new(), format!("K{i}"))).collect(),
            scope: scope.iter().map(|s| (*s).to_string()).collect(),
            wit: WitVersion::V0_2,
            hooks: Hooks::ALL,
            reads: Vec::new(),
        }
    }

    #[test]
    fn reads_must_be_plain_pointers_that_hold_every_scope_and_some_hook_is_listed() {
        let with = |reads: &[&str], scope: &[&str]| {
            let mut raw = mk_raw("p", "0.2.0", 1, scope);
            raw.reads = reads.iter().map(|s| (*s).to_string()).collect();
            check_describe("p", raw)
        };
        assert!(with(&["/spec"], &["/spec/ports/*/nodePort", "/spec/clusterIP"]).is_ok());
        assert!(with(&[], &["/spec/x"]).is_ok(), "no reads: the whole object");
        let err = with(&["/spec/ports/0"], &["/spec/ports/*/nodePort"]).expect_err("a wildcard scope is wider");
        assert!(err.to_string().contains("outside every read"), "{err}");
        assert!(with(&["/metadata"], &["/spec/x"]).is_err());
        assert!(with(&["/"], &["/spec/x", "/metadata/labels/a"]).is_ok(), "/ reads the whole object");
        assert!(with(&["/metadata"], &["/metadata/labels/a"]).is_ok());
        assert!(with(&["/spec/*"], &[]).is_err(), "no wildcards in reads");
        assert!(with(&["spec"], &[]).is_err(), "not a pointer");
        let mut none = mk_raw("p", "0.2.0", 1, &[]);
        none.hooks = Hooks { transform: false, preserve: false, ignore_paths: false };
        assert!(check_describe("p", none).expect_err("no hooks").to_string().contains("no hooks"));
    }

    #[test]
    fn describe_output_is_bounded_and_shown_bounded() {
        assert!(check_describe("p", mk_raw("p", "0.1.0", 1, &["/spec"])).is_ok());
        let huge = "x".repeat(1 << 20);
        let err = check_describe("p", mk_raw(&huge, "0.1.0", 1, &[])).expect_err("long name");
        assert!(err.to_string().len() < 300, "{err}");
        assert!(check_describe("p", mk_raw("p", &huge, 1, &[])).is_err());
        assert!(check_describe("p", mk_raw("p", "1\n2", 1, &[])).is_err());
        assert!(check_describe("p", mk_raw("p", "0.1.0", 10_000, &[])).is_err());
        let long_scope = format!("/spec/{huge}");
        let err = check_describe("p", mk_raw("p", "0.1.0", 1, &[&long_scope])).expect_err("long scope");
        assert!(err.to_string().len() < 300, "{err}");
    }
}
