//! The downstream API server's audit log (`controlplane.sh up --audit`): who wrote what and
//! when, as the API server saw it, so that tests attribute writes without trusting downsync's
//! own counters.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::clusters;

/// One write request, as the audit log recorded it.
#[derive(Debug, Clone)]
pub struct Write {
    /// `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// The resource (`configmaps`, `leases`, ...).
    pub resource: String,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
    /// Its name (known for every verb on a named object, and for creates).
    pub name: Option<String>,
    /// The client's user agent.
    pub user_agent: String,
    /// The HTTP status code of the response.
    pub code: u16,
    /// When the API server received the request.
    pub received: Timestamp,
    /// When the API server completed the response.
    pub completed: Timestamp,
    /// Whether it was a server-side dry run (`dryRun=All`): nothing was persisted.
    pub dry_run: bool,
}

impl Write {
    /// Whether the write took effect (2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The downsync replica that made it: the identity in `downsync/VERSION (IDENTITY)`.
    pub fn replica(&self) -> Option<&str> {
        let rest = self.user_agent.strip_prefix("downsync/")?;
        let (_, id) = rest.split_once(" (")?;
        id.strip_suffix(')')
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    verb: String,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    object_ref: Option<RawRef>,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    response_status: Option<RawStatus>,
    request_received_timestamp: Timestamp,
    stage_timestamp: Timestamp,
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(default)]
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: u16,
}

/// The downstream audit log: `DOWNSYNC_DOWNSTREAM_AUDIT_LOG`, else `logs/audit.log` beside the
/// downstream kubeconfig (where `controlplane.sh up --audit` writes it).
pub fn downstream_audit_log() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DOWNSYNC_DOWNSTREAM_AUDIT_LOG") {
        return Ok(p.into());
    }
    let kc = clusters()?.downstream.kubeconfig;
    let path = kc.parent().map(|d| d.join("logs").join("audit.log")).unwrap_or_default();
    if !path.is_file() {
        bail!(
            "no audit log at {}: start the downstream control plane with `controlplane.sh up NAME --audit`, \
             or point DOWNSYNC_DOWNSTREAM_AUDIT_LOG at the API server's audit log",
            path.display()
        );
    }
    Ok(path)
}

/// Every write in the downstream audit log whose user agent is one of downsync's.
pub fn downsync_writes() -> Result<Vec<Write>> {
    let path = downstream_audit_log()?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        // Cheap filter first: the log holds every test's and the cluster's own writes.
        if !line.contains("\"userAgent\":\"downsync/") {
            continue;
        }
        let e: RawEvent =
            serde_json::from_str(line).with_context(|| format!("an audit event in {}", path.display()))?;
        let r = e.object_ref.unwrap_or(RawRef { resource: String::new(), namespace: None, name: None });
        out.push(Write {
            verb: e.verb,
            resource: r.resource,
            namespace: r.namespace,
            name: r.name,
            user_agent: e.user_agent,
            code: e.response_status.map_or(0, |s| s.code),
            received: e.request_received_timestamp,
            completed: e.stage_timestamp,
            dry_run: e.request_uri.contains("dryRun=All"),
        });
    }
    Ok(out)
}
