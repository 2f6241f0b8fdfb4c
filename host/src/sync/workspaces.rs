//! Many kcp workspaces through one upstream endpoint: which URLs serve many, the logical
//! cluster of an object, the URL of one workspace under such an endpoint (where writes back
//! upstream go), and downstream namespace names per (workspace, namespace).
//!
//! kcp serves many workspaces at once through a URL whose path ends in `/clusters/*`: the
//! shard's wildcard (`https://kcp/clusters/*`) or an APIExport's virtual workspace
//! (`https://kcp/services/apiexport/<cluster>/<export>/clusters/*`). Every object read there
//! carries its workspace's logical cluster in the `kcp.io/cluster` annotation; writes are not
//! served at `*`, only at `/clusters/<logical cluster>` under the same prefix.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The annotation kcp puts on every object: the logical cluster (workspace) it lives in.
pub const CLUSTER_ANNOTATION: &str = "kcp.io/cluster";

/// Annotation on every object synced from a multi-workspace endpoint: the logical cluster it
/// came from, so that a downstream object leads back to its workspace (kcp's own annotation is
/// not copied, see [`super::mapping::is_kcp_key`]).
pub const UPSTREAM_CLUSTER_ANNOTATION: &str = "downsync.dev/upstream-cluster";

/// The path suffix of a multi-workspace endpoint.
const WILDCARD: &str = "/clusters/*";

/// Whether `url` serves many workspaces at once: its path ends in `/clusters/*`.
pub fn is_multi_workspace(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.trim_end_matches('/');
    path.ends_with(WILDCARD) || path.ends_with("/clusters/%2A")
}

/// The URL of logical cluster `cluster` under multi-workspace endpoint `url`: the same prefix
/// (shard or virtual workspace) with `/clusters/<cluster>`. `None` when `url` is not one, or
/// `cluster` is not a logical cluster name.
pub fn cluster_url(url: &str, cluster: &str) -> Option<String> {
    if !is_multi_workspace(url) || !is_logical_cluster_name(cluster) {
        return None;
    }
    let base = url.split(['?', '#']).next().unwrap_or(url).trim_end_matches('/');
    let prefix = base.strip_suffix(WILDCARD).or_else(|| base.strip_suffix("/clusters/%2A"))?;
    Some(format!("{prefix}/clusters/{cluster}"))
}

/// Whether `name` can be a logical cluster (kcp: lowercase letters, digits, `-`, and `:`
/// between the parts of a workspace path), and so be put in a URL path as it is.
pub fn is_logical_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':')
        && !name.starts_with([':', '-'])
        && !name.ends_with([':', '-'])
}

/// The logical cluster of an upstream object, from kcp's annotation.
pub fn logical_cluster(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?.get(CLUSTER_ANNOTATION)?.as_str().filter(|c| is_logical_cluster_name(c))
}

/// The downstream namespace of namespace `ns` of workspace `cluster`, for sync target
/// `target`: `ds-` and 16 hex digits of sha256(target, cluster, ns), as kcp's syncer named
/// them. Distinct per workspace, so two workspaces' `default` never meet downstream.
pub fn hashed_namespace(target: &str, cluster: &str, ns: &str) -> String {
    let digest = Sha256::digest(format!("{target}\0{cluster}\0{ns}").as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("ds-{hex}")
}

/// The locator a downstream namespace of a workspace carries: target, workspace, namespace.
pub fn locator(target: &str, cluster: &str, ns: &str) -> String {
    json!({"target": target, "cluster": cluster, "namespace": ns}).to_string()
}

/// The upstream namespace of an object read through a multi-workspace endpoint, as downsync
/// keys it: `<logical cluster>/<namespace>`. Neither part can hold a `/`, so it splits back
/// unambiguously ([`split_namespace`]), and the pair is unique where the namespace alone is not.
pub fn qualify_namespace(cluster: &str, ns: &str) -> String {
    format!("{cluster}/{ns}")
}

/// A namespace as [`qualify_namespace`] made it: the logical cluster and the plain namespace;
/// a plain namespace has no cluster.
pub fn split_namespace(ns: &str) -> (Option<&str>, &str) {
    match ns.split_once('/') {
        Some((cluster, plain)) => (Some(cluster), plain),
        None => (None, ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qualified_namespace_splits_back_and_a_plain_one_has_no_cluster() {
        let q = qualify_namespace("2abc9xyz", "default");
        assert_eq!(q, "2abc9xyz/default");
        assert_eq!(split_namespace(&q), (Some("2abc9xyz"), "default"));
        assert_eq!(split_namespace("default"), (None, "default"));
        assert_ne!(qualify_namespace("a", "default"), qualify_namespace("b", "default"));
    }

    #[test]
    fn wildcard_and_virtual_workspace_urls_serve_many_workspaces_and_a_workspace_url_does_not() {
        for many in [
            "https://kcp.example:6443/clusters/*",
            "https://kcp.example:6443/clusters/*/",
            "https://kcp.example/services/apiexport/1x2y3z/downsync/clusters/*",
            "https://kcp.example/services/apiexport/1x2y3z/downsync/clusters/%2A",
        ] {
            assert!(is_multi_workspace(many), "{many}");
        }
        for one in [
            "https://kcp.example:6443/clusters/root:team-a",
            "https://kcp.example:6443/clusters/root",
            "https://kcp.example:6443",
            "https://10.0.0.1",
            "https://kcp.example/services/apiexport/1x2y3z/downsync",
        ] {
            assert!(!is_multi_workspace(one), "{one}");
        }
    }

    #[test]
    fn writes_go_to_the_workspace_under_the_same_prefix() {
        assert_eq!(
            cluster_url("https://kcp.example/services/apiexport/1x2y/downsync/clusters/*", "2abc9xyz").as_deref(),
            Some("https://kcp.example/services/apiexport/1x2y/downsync/clusters/2abc9xyz")
        );
        assert_eq!(
            cluster_url("https://127.0.0.1:6443/clusters/*/", "root:team-a").as_deref(),
            Some("https://127.0.0.1:6443/clusters/root:team-a")
        );
        assert_eq!(cluster_url("https://127.0.0.1:6443/clusters/root", "abc"), None, "not a multi-workspace URL");
        assert_eq!(cluster_url("https://127.0.0.1:6443/clusters/*", "../../api"), None, "not a cluster name");
        assert_eq!(cluster_url("https://127.0.0.1:6443/clusters/*", ""), None);
    }

    #[test]
    fn the_logical_cluster_comes_from_kcps_annotation_and_a_bad_one_is_none() {
        let obj = |c: &str| json!({"metadata": {"name": "x", "annotations": {CLUSTER_ANNOTATION: c}}});
        assert_eq!(logical_cluster(&obj("2abc9xyz")), Some("2abc9xyz"));
        assert_eq!(logical_cluster(&obj("a/b")), None);
        assert_eq!(logical_cluster(&json!({"metadata": {"name": "x"}})), None);
    }

    #[test]
    fn namespaces_are_distinct_per_workspace_stable_and_valid() {
        let a = hashed_namespace("east", "ws-a", "default");
        assert_eq!(a, hashed_namespace("east", "ws-a", "default"));
        assert_ne!(a, hashed_namespace("east", "ws-b", "default"), "another workspace, another namespace");
        assert_ne!(a, hashed_namespace("west", "ws-a", "default"), "another target, another namespace");
        assert_ne!(hashed_namespace("east", "ws", "a-default"), hashed_namespace("east", "ws-a", "default"));
        assert!(a.starts_with("ds-") && a.len() == 19, "{a}");
        let l: Value = serde_json::from_str(&locator("east", "ws-a", "default")).unwrap();
        assert_eq!(l, json!({"target": "east", "cluster": "ws-a", "namespace": "default"}));
    }
}
