//! Built-in rule: keeps PersistentVolume and PersistentVolumeClaim binding made downstream.
//!
//! - PersistentVolume: a bound volume keeps its `spec.claimRef`; a downstream `Retain`
//!   `persistentVolumeReclaimPolicy` is never switched to something else (an operator set it to
//!   protect the data).
//! - PersistentVolumeClaim: keeps `spec.volumeName` and the binding and provisioning
//!   annotations the downstream controllers wrote.
//!
//! Every kept field is copied only when the desired object does not set it, except the
//! `Retain` policy, which wins over a desired one, and a PV's live `claimRef` when the desired
//! one names the same claim (a pre-binding by name): the live one carries the downstream
//! claim's uid, and dropping it would unbind the volume.
//!
//! An upstream that is a Kubernetes cluster binds too, for its own objects. `transform` drops
//! what its binder wrote: a `claimRef`'s uid and resourceVersion (the name stays, as a
//! pre-binding request), and the binder's and provisioner's annotations.

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value, kinds, pointer};

/// The PVC annotations the downstream binder and provisioner write, as escaped pointers.
pub const PVC_ANNOTATIONS: [&str; 5] = [
    "/metadata/annotations/pv.kubernetes.io~1bind-completed",
    "/metadata/annotations/pv.kubernetes.io~1bound-by-controller",
    "/metadata/annotations/volume.kubernetes.io~1selected-node",
    "/metadata/annotations/volume.beta.kubernetes.io~1storage-provisioner",
    "/metadata/annotations/volume.kubernetes.io~1storage-provisioner",
];

const CLAIM_REF: &str = "/spec/claimRef";
const RECLAIM: &str = "/spec/persistentVolumeReclaimPolicy";
const VOLUME_NAME: &str = "/spec/volumeName";

/// Keeps volume binding.
pub struct PersistentVolumeRule;

impl Rule for PersistentVolumeRule {
    fn describe() -> Info {
        let info = Info::new("persistent-volume", "0.2.0")
            .hooks(&[Hook::Transform, Hook::Preserve, Hook::IgnorePaths])
            .reads("/spec")
            .reads("/metadata/annotations")
            .kind("", "PersistentVolume")
            .kind("", "PersistentVolumeClaim")
            .scope(CLAIM_REF)
            .scope(RECLAIM)
            .scope(VOLUME_NAME);
        PVC_ANNOTATIONS.iter().fold(info, |info, p| info.scope(p))
    }

    fn transform(mut desired: Value, _intent: &Intent) -> Result<Value, String> {
        drop_upstream_binding(&mut desired);
        Ok(desired)
    }

    fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
        if kinds::is(&desired, "", "PersistentVolume") {
            keep_pv(&existing, &mut desired)?;
        } else if kinds::is(&desired, "", "PersistentVolumeClaim") {
            keep_pvc(&existing, &mut desired);
        }
        Ok(Decision::Apply(desired))
    }

    fn ignore_paths(group: &str, kind: &str) -> Vec<String> {
        match (group, kind) {
            ("", "PersistentVolume") => vec![CLAIM_REF.to_string()],
            ("", "PersistentVolumeClaim") => {
                std::iter::once(VOLUME_NAME).chain(PVC_ANNOTATIONS).map(str::to_string).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Removes what an upstream binder or provisioner wrote: the claimRef's uid and
/// resourceVersion, and the binding annotations.
pub fn drop_upstream_binding(obj: &mut Value) {
    if kinds::is(obj, "", "PersistentVolume")
        && let Some(claim) = pointer::get_mut(obj, CLAIM_REF).and_then(Value::as_object_mut)
    {
        claim.remove("uid");
        claim.remove("resourceVersion");
    }
    if let Some(annotations) = pointer::get_mut(obj, "/metadata/annotations").and_then(Value::as_object_mut) {
        for p in PVC_ANNOTATIONS {
            if let Some(key) = p.strip_prefix("/metadata/annotations/") {
                annotations.remove(&key.replace("~1", "/"));
            }
        }
    }
}

/// The (namespace, name) a claimRef points at.
fn claim_of(obj: &Value) -> Option<(Option<&str>, Option<&str>)> {
    let c = pointer::get(obj, CLAIM_REF)?;
    Some((c.get("namespace").and_then(Value::as_str), c.get("name").and_then(Value::as_str)))
}

/// PersistentVolume: keep a bound claimRef and a downstream Retain policy.
pub fn keep_pv(existing: &Value, desired: &mut Value) -> Result<(), String> {
    let same_claim = claim_of(desired).is_some() && claim_of(desired) == claim_of(existing);
    if same_claim && let Some(live) = pointer::get(existing, CLAIM_REF).cloned() {
        pointer::set(desired, CLAIM_REF, live);
    }
    pointer::copy_if_absent(existing, desired, CLAIM_REF);
    let live_policy = pointer::get(existing, RECLAIM).and_then(Value::as_str);
    let wanted = pointer::get(desired, RECLAIM).and_then(Value::as_str);
    if live_policy == Some("Retain")
        && wanted != Some("Retain")
        && !pointer::set(desired, RECLAIM, Value::from("Retain"))
    {
        return Err("spec is not an object".into());
    }
    Ok(())
}

/// PersistentVolumeClaim: keep volumeName and the binder's annotations.
pub fn keep_pvc(existing: &Value, desired: &mut Value) {
    pointer::copy_if_absent(existing, desired, VOLUME_NAME);
    for p in PVC_ANNOTATIONS {
        pointer::copy_if_absent(existing, desired, p);
    }
}

downsync_plugin_sdk::export_rule!(PersistentVolumeRule);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    fn mk_pv(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"}, "spec": spec})
    }

    fn mk_pvc(annotations: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "n", "annotations": annotations}, "spec": spec})
    }

    fn apply(existing: Value, desired: Value) -> Value {
        match PersistentVolumeRule::preserve(existing, desired, &Intent::unknown()).unwrap() {
            Decision::Apply(v) => v,
            other => panic!("expected apply, got {other:?}"),
        }
    }

    #[test]
    fn a_bound_pv_keeps_its_claim_ref() {
        let claim = json!({"kind": "PersistentVolumeClaim", "namespace": "n", "name": "data", "uid": "u1"});
        let out = apply(mk_pv(json!({"claimRef": claim.clone()})), mk_pv(json!({"capacity": {"storage": "1Gi"}})));
        assert_eq!(out["spec"]["claimRef"], claim);
        let unbound = apply(mk_pv(json!({})), mk_pv(json!({})));
        assert_eq!(unbound["spec"].get("claimRef"), None);
    }

    #[test]
    fn a_prebinding_by_name_keeps_the_live_claim_uid() {
        let live = json!({"kind": "PersistentVolumeClaim", "namespace": "n", "name": "data", "uid": "down-1", "resourceVersion": "7"});
        let out = apply(
            mk_pv(json!({"claimRef": live.clone()})),
            mk_pv(json!({"claimRef": {"namespace": "n", "name": "data"}})),
        );
        assert_eq!(out["spec"]["claimRef"], live);
        let rebind =
            apply(mk_pv(json!({"claimRef": live})), mk_pv(json!({"claimRef": {"namespace": "n", "name": "other"}})));
        assert_eq!(
            rebind["spec"]["claimRef"],
            json!({"namespace": "n", "name": "other"}),
            "a different claim is a new request"
        );
    }

    #[test]
    fn what_the_upstream_binder_wrote_does_not_travel() {
        let mut pv = mk_pv(
            json!({"claimRef": {"kind": "PersistentVolumeClaim", "namespace": "n", "name": "data", "uid": "up-1", "resourceVersion": "322"}}),
        );
        pv["metadata"]["annotations"] = json!({"pv.kubernetes.io/bound-by-controller": "yes", "team": "a"});
        drop_upstream_binding(&mut pv);
        assert_eq!(pv["spec"]["claimRef"], json!({"kind": "PersistentVolumeClaim", "namespace": "n", "name": "data"}));
        assert_eq!(pv["metadata"]["annotations"], json!({"team": "a"}));
        let mut pvc = mk_pvc(
            json!({"pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n1"}),
            json!({"volumeName": "pv1"}),
        );
        drop_upstream_binding(&mut pvc);
        assert_eq!(pvc["metadata"]["annotations"], json!({}));
        assert_eq!(pvc["spec"]["volumeName"], "pv1", "a pre-binding by name stays");
    }

    #[test]
    fn a_downstream_retain_policy_is_not_switched() {
        let out = apply(
            mk_pv(json!({"persistentVolumeReclaimPolicy": "Retain"})),
            mk_pv(json!({"persistentVolumeReclaimPolicy": "Delete"})),
        );
        assert_eq!(out["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        let out = apply(
            mk_pv(json!({"persistentVolumeReclaimPolicy": "Delete"})),
            mk_pv(json!({"persistentVolumeReclaimPolicy": "Retain"})),
        );
        assert_eq!(out["spec"]["persistentVolumeReclaimPolicy"], "Retain", "upstream may ask for Retain");
        let out = apply(mk_pv(json!({"persistentVolumeReclaimPolicy": "Delete"})), mk_pv(json!({})));
        assert_eq!(out["spec"].get("persistentVolumeReclaimPolicy"), None, "only Retain is kept");
    }

    #[test]
    fn a_pvc_keeps_volume_name_and_binder_annotations_only() {
        let live = mk_pvc(
            json!({"pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "node-1", "team": "x"}),
            json!({"volumeName": "pv1"}),
        );
        let out = apply(live, mk_pvc(json!(null), json!({"resources": {"requests": {"storage": "1Gi"}}})));
        assert_eq!(out["spec"]["volumeName"], "pv1");
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "node-1"})
        );
    }

    #[test]
    fn ignore_paths_per_kind() {
        assert_eq!(PersistentVolumeRule::ignore_paths("", "PersistentVolume"), ["/spec/claimRef"]);
        assert_eq!(PersistentVolumeRule::ignore_paths("", "PersistentVolumeClaim").len(), 6);
        assert!(PersistentVolumeRule::ignore_paths("apps", "PersistentVolume").is_empty());
    }
}
