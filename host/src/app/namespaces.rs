//! Downstream namespaces: created once per name however many workers ask at the same time
//! (single flight), and deleted again when downsync created them, their upstream namespace is
//! gone, they hold nothing downsync does not own, and the downstream RBAC lets downsync delete
//! namespaces (without that verb they are kept: the RBAC is the setting).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Api, Client};
use tracing::info;

use crate::kube::errors::classify;
use crate::kube::upstream::Upstream;
use crate::sync::Ownership;
use crate::sync::error::ApiError;
use crate::sync::mapping::{NAMESPACE_LOCATOR_ANNOTATION, NamespaceMapping};
use crate::sync::ownership::{MANAGED_BY_LABEL, OWNER_ANNOTATION, TARGET_LABEL, owner_value};

/// What a cleanup check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Nothing to do: the namespace is gone, or is not downsync's to delete.
    Done,
    /// The namespace was deleted.
    Deleted,
    /// Kept, for this reason (something downsync does not own lives in it, or upstream still
    /// has the namespace).
    Kept(String),
    /// Not yet: downsync's own objects, or their dependents, are still going.
    Wait(String),
}

/// The downstream namespaces downsync makes and removes.
pub struct Namespaces {
    down: Client,
    up: Upstream,
    ownership: Ownership,
    /// One async lock per downstream namespace, holding whether it is known to exist: the
    /// first worker creates it, the others wait for that instead of racing it to a 409.
    known: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

/// Objects that any namespace holds without anyone asking: they do not keep a namespace alive.
fn is_ambient(ar: &ApiResource, name: &str) -> bool {
    (ar.group.is_empty() || ar.group == "events.k8s.io") && ar.kind == "Event"
        || ar.group.is_empty() && ar.kind == "ConfigMap" && name == "kube-root-ca.crt"
        || ar.group.is_empty() && ar.kind == "ServiceAccount" && name == "default"
}

impl Namespaces {
    /// Namespaces in `down`, with upstream read through `up`, stamped for `ownership`.
    pub fn new(down: Client, up: Upstream, ownership: Ownership) -> Self {
        Self { down, up, ownership, known: Mutex::default() }
    }

    fn cell(&self, name: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(known.entry(name.to_string()).or_default())
    }

    /// Makes sure downstream namespace `name` exists, creating it (once) for upstream namespace
    /// `upstream_ns` if it does not.
    pub async fn ensure(&self, name: &str, upstream_ns: &str) -> Result<(), ApiError> {
        let cell = self.cell(name);
        let mut exists = cell.lock().await;
        if *exists {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.down.clone());
        if api.get_opt(name).await.map_err(classify)?.is_none() {
            let o = &self.ownership;
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([
                        (MANAGED_BY_LABEL.to_string(), o.identity.clone()),
                        (TARGET_LABEL.to_string(), o.target.clone()),
                    ])),
                    annotations: Some(BTreeMap::from([
                        (NAMESPACE_LOCATOR_ANNOTATION.to_string(), NamespaceMapping::locator(&o.target, upstream_ns)),
                        (OWNER_ANNOTATION.to_string(), owner_value(o)),
                    ])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match api.create(&PostParams::default(), &ns).await.map_err(classify) {
                Ok(_) => info!(namespace = %name, upstream_namespace = %upstream_ns, "created downstream namespace"),
                // Created by someone else since the read: it exists, which is all we need.
                Err(ApiError::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
        *exists = true;
        Ok(())
    }

    /// Forgets that `name` exists (a write found it gone); the next [`Namespaces::ensure`] looks again.
    pub fn forget(&self, name: &str) {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    fn created_by_us(&self, ns: &Namespace) -> bool {
        let labels = ns.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        label(MANAGED_BY_LABEL) == Some(self.ownership.identity.as_str())
            && label(TARGET_LABEL) == Some(self.ownership.target.as_str())
    }

    /// Downstream namespaces downsync created for this target, with the upstream namespace
    /// each stands for (from the locator annotation, else the same name).
    pub async fn created(&self) -> Result<Vec<(String, String)>, ApiError> {
        let api: Api<Namespace> = Api::all(self.down.clone());
        let lp = ListParams::default().labels(&crate::sync::ownership::owned_selector(&self.ownership));
        let list = api.list_metadata(&lp).await.map_err(classify)?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name?;
                let upstream = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(NAMESPACE_LOCATOR_ANNOTATION))
                    .and_then(|l| locator_namespace(l))
                    .unwrap_or_else(|| name.clone());
                Some((name, upstream))
            })
            .collect())
    }

    /// Deletes downstream namespace `name` if downsync created it, upstream namespace
    /// `upstream_ns` is gone, and nothing in it is someone else's.
    pub async fn cleanup(&self, name: &str, upstream_ns: &str) -> Result<Cleanup, ApiError> {
        let api: Api<Namespace> = Api::all(self.down.clone());
        let Some(ns) = api.get_opt(name).await.map_err(classify)? else {
            self.forget(name);
            return Ok(Cleanup::Done);
        };
        if !self.created_by_us(&ns) || ns.metadata.deletion_timestamp.is_some() {
            return Ok(Cleanup::Done);
        }
        let (client, plain) = self.up.route(Some(upstream_ns), None).await?;
        let upstream: Api<Namespace> = Api::all(client);
        match upstream.get_opt(plain.as_deref().unwrap_or(upstream_ns)).await.map_err(classify) {
            Ok(None) => {}
            Ok(Some(u)) if u.metadata.deletion_timestamp.is_some() => {
                return Ok(Cleanup::Wait(format!("upstream namespace {upstream_ns} is being deleted")));
            }
            Ok(Some(_)) => return Ok(Cleanup::Kept(format!("upstream namespace {upstream_ns} exists"))),
            Err(e) => return Ok(Cleanup::Kept(format!("cannot read upstream namespace {upstream_ns}: {e}"))),
        }
        let (mine, dependents, foreign) = self.contents(name).await?;
        if !foreign.is_empty() {
            return Ok(Cleanup::Kept(format!("it holds objects downsync does not own: {}", foreign.join(", "))));
        }
        if mine + dependents > 0 {
            return Ok(Cleanup::Wait(format!("{mine} owned objects and {dependents} dependents still there")));
        }
        let uid = ns.metadata.uid.clone();
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid, resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await.map_err(classify) {
            Ok(_) | Err(ApiError::NotFound) => {}
            // The downstream's RBAC decides: without `delete` on namespaces, they are kept.
            Err(ApiError::Other { code: 403, .. }) => {
                return Ok(Cleanup::Kept(
                    "the downstream cluster does not let downsync delete namespaces (no `delete` on namespaces in its RBAC)"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        }
        self.forget(name);
        info!(namespace = %name, upstream_namespace = %upstream_ns, "deleted the downstream namespace downsync created; its upstream namespace is gone");
        Ok(Cleanup::Deleted)
    }

    /// Counts what namespace `name` holds: downsync's own objects, dependents (objects with an
    /// owner, which the garbage collector removes with it), and the names of anything else.
    async fn contents(&self, name: &str) -> Result<(usize, usize, Vec<String>), ApiError> {
        let discovery = Discovery::new(self.down.clone()).run().await.map_err(classify)?;
        let owner = owner_value(&self.ownership);
        let (mut mine, mut dependents, mut foreign) = (0, 0, Vec::new());
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) {
                    continue;
                }
                let api: Api<PartialObjectMeta<kube::api::DynamicObject>> =
                    Api::namespaced_with(self.down.clone(), name, &ar);
                let list = match api.list_metadata(&ListParams::default()).await {
                    Ok(l) => l,
                    // A kind we may not list cannot be judged: say so rather than delete blind.
                    Err(e) => {
                        foreign.push(format!("{} (cannot list: {})", ar.plural, classify(e)));
                        continue;
                    }
                };
                for item in list.items {
                    let m = &item.metadata;
                    let item_name = m.name.clone().unwrap_or_default();
                    if is_ambient(&ar, &item_name) {
                        continue;
                    }
                    if m.annotations.as_ref().and_then(|a| a.get(OWNER_ANNOTATION)) == Some(&owner) {
                        mine += 1;
                    } else if m.owner_references.as_ref().is_some_and(|o| !o.is_empty()) {
                        dependents += 1;
                    } else if foreign.len() < 5 {
                        foreign.push(format!("{} {item_name}", ar.kind));
                    }
                }
            }
        }
        Ok((mine, dependents, foreign))
    }
}

/// The upstream namespace in a locator annotation (`{"target":…,"namespace":…}`), if any.
fn locator_namespace(locator: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(locator).ok()?;
    let ns = v.get("namespace")?.as_str()?;
    Some(match v.get("cluster").and_then(serde_json::Value::as_str) {
        Some(cluster) => crate::sync::workspaces::qualify_namespace(cluster, ns),
        None => ns.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locator_names_the_upstream_namespace() {
        let l = NamespaceMapping::locator("east", "team-a");
        assert_eq!(locator_namespace(&l).as_deref(), Some("team-a"), "{l}");
        assert_eq!(locator_namespace("not json"), None);
    }

    #[test]
    fn events_and_per_namespace_defaults_do_not_keep_a_namespace() {
        let core = |kind: &str| ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: String::new(),
        };
        assert!(is_ambient(&core("Event"), "x"));
        assert!(is_ambient(&core("ConfigMap"), "kube-root-ca.crt"));
        assert!(is_ambient(&core("ServiceAccount"), "default"));
        assert!(!is_ambient(&core("ConfigMap"), "app"));
        assert!(!is_ambient(&core("Secret"), "default"));
    }
}
