//! Projection for rules 0.2.0: what a plugin is sent (only the parts of an object it reads)
//! and how what it returns is merged back into the full object.
//!
//! A read pointer that passes through a list is widened to that list (a projection that
//! keeps list indexes would need placeholders for the other elements), so `/spec/ports/0/name`
//! sends all of `/spec/ports`. The widening is computed per object, the same for the
//! projection and the merge.
//!
//! A read that holds an identity field (`/metadata`, or `/`, the whole object) sends the whole
//! subtree, identity included, and the merge puts back exactly what was sent: what the plugin
//! returns replaces it, and the identity fields always keep the object's own values.

use serde_json::{Map, Value};

use crate::sync::pointer;

/// Sent with every projection, read-only: what a plugin needs to name the object in a message.
pub const IDENTITY: [&str; 4] = ["/apiVersion", "/kind", "/metadata/name", "/metadata/namespace"];

/// The read a plugin writes for the whole object. RFC 6901 would read `/` as the key `""`,
/// which no Kubernetes object has at its top; as a read it means the root (pointer `""`).
pub const ROOT_READ: &str = "/";

/// The JSON pointer a read stands for: itself, or `""` (the root) for [`ROOT_READ`].
pub fn read_pointer(read: &str) -> &str {
    if read == ROOT_READ { "" } else { read }
}

/// The pointers actually projected for `reads` over `obj`: each read, or the first list on
/// its way; [`ROOT_READ`] becomes `""`. Empty `reads` (the whole object) stays empty.
pub fn effective(obj: &Value, reads: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(reads.len());
    for read in reads {
        let widened = widen(obj, read_pointer(read));
        if !out.iter().any(|o| crate::sync::intent::covers(o, &widened)) {
            out.retain(|o| !crate::sync::intent::covers(&widened, o));
            out.push(widened);
        }
    }
    out
}

fn widen(obj: &Value, read: &str) -> String {
    let Ok(segments) = pointer::parse(read) else { return read.to_string() };
    let mut cur = obj;
    for (i, seg) in segments.iter().enumerate() {
        match cur {
            Value::Array(_) => return pointer::join(&segments[..i]),
            Value::Object(map) => match map.get(seg) {
                Some(next) => cur = next,
                None => break,
            },
            _ => break,
        }
    }
    read.to_string()
}

/// The identity fields and the parts of `obj` at `reads` (already [`effective`]), as a new
/// object. A part that is absent is absent from the projection too.
pub fn project(obj: &Value, reads: &[String]) -> Value {
    let mut out = Value::Object(Map::new());
    for p in IDENTITY.iter().copied().chain(reads.iter().map(String::as_str)) {
        if let Some(v) = obj.pointer(p) {
            // Cannot fail: every parent on the way is created as an object, and the paths
            // come from objects (never through a list, see `effective`).
            let _ = pointer::set(&mut out, p, v.clone());
        }
    }
    out
}

/// The JSON text of [`project`]`(obj, reads)`, written from `obj` without copying it first.
pub fn project_text(obj: &Value, reads: &[String]) -> String {
    let mut root = Node::Map(Vec::new());
    for p in IDENTITY.iter().copied().chain(reads.iter().map(String::as_str)) {
        if let (Some(v), Ok(segments)) = (obj.pointer(p), pointer::parse(p)) {
            root.insert(&segments, v);
        }
    }
    serde_json::to_string(&root).unwrap_or_default()
}

/// A projection that borrows its leaves from the object.
enum Node<'a> {
    Leaf(&'a Value),
    Map(Vec<(String, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Places `v` (the object's value at `segments`) in the tree. A leaf already on the way
    /// holds it; a node already at `segments` (made for a field below, such as an identity
    /// field) is replaced by the whole subtree, which holds what it held.
    fn insert(&mut self, segments: &[String], v: &'a Value) {
        let Node::Map(children) = self else { return };
        let Some((first, rest)) = segments.split_first() else {
            *self = Node::Leaf(v);
            return;
        };
        match children.iter_mut().find(|(k, _)| k == first) {
            Some((_, child)) => child.insert(rest, v),
            None => {
                let mut child = Node::Map(Vec::new());
                child.insert(rest, v);
                children.push((first.clone(), child));
            }
        }
    }
}

impl serde::Serialize for Node<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Node::Leaf(v) => v.serialize(s),
            Node::Map(children) => {
                let mut m = s.serialize_map(Some(children.len()))?;
                for (k, v) in children {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

/// Replaces the parts of `full` at `reads` (already [`effective`]) with those of `returned`: a
/// part present there is written, a part absent there is removed. Nothing outside the reads is
/// touched, and identity fields are not merged, even under a read that holds them (`/metadata`):
/// they keep `full`'s values. Fails when a part cannot be placed (a scalar where its parent
/// object should be).
pub fn merge(full: &mut Value, mut returned: Value, reads: &[String]) -> Result<(), pointer::Error> {
    if !returned.is_object() {
        return Ok(());
    }
    let identity: Vec<(&str, Option<Value>)> = IDENTITY
        .iter()
        .filter(|id| reads.iter().any(|r| crate::sync::intent::covers(r, id)))
        .map(|id| (*id, full.pointer(id).cloned()))
        .collect();
    for read in reads {
        match returned.pointer_mut(read).map(Value::take) {
            Some(v) => pointer::set(full, read, v)?,
            None => remove(full, read),
        }
    }
    for (id, kept) in identity {
        match kept {
            Some(v) => pointer::set(full, id, v)?,
            None => remove(full, id),
        }
    }
    Ok(())
}

/// Removes the value at `ptr`, if any.
fn remove(v: &mut Value, ptr: &str) {
    let Some((parent, last)) = ptr.rsplit_once('/') else { return };
    let Ok(segments) = pointer::parse(&format!("/{last}")) else { return };
    let Some(key) = segments.first() else { return };
    match v.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.shift_remove(key);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = key.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_svc() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "n", "labels": {"a": "1"}, "annotations": {"x/y": "2"}},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {}}})
    }

    fn reads(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_projection_holds_identity_and_the_reads_only() {
        let p = project(&mk_svc(), &reads(&["/spec", "/metadata/annotations", "/data"]));
        assert_eq!(
            p,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "n",
                "annotations": {"x/y": "2"}}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}})
        );
    }

    #[test]
    fn the_projection_text_is_the_projection() {
        let svc = mk_svc();
        for r in [reads(&["/spec", "/metadata/annotations"]), reads(&["/spec/type", "/status"]), reads(&["/nothing"])] {
            let text: Value = serde_json::from_str(&project_text(&svc, &r)).expect("json");
            assert_eq!(text, project(&svc, &r), "{r:?}");
        }
    }

    #[test]
    fn reads_through_a_list_widen_to_the_list_and_nested_reads_fold() {
        let svc = mk_svc();
        assert_eq!(effective(&svc, &reads(&["/spec/ports/0/nodePort"])), reads(&["/spec/ports"]));
        assert_eq!(effective(&svc, &reads(&["/spec/type", "/spec", "/spec/ports"])), reads(&["/spec"]));
        assert_eq!(effective(&svc, &reads(&["/spec/absent/x"])), reads(&["/spec/absent/x"]));
        assert!(effective(&svc, &[]).is_empty());
    }

    #[test]
    fn merge_writes_returned_parts_removes_dropped_ones_and_keeps_the_rest() {
        let mut full = mk_svc();
        let r = reads(&["/spec", "/metadata/annotations"]);
        let mut back = project(&full, &r);
        back["spec"]["ports"][0]["nodePort"] = json!(31000);
        back["metadata"].as_object_mut().map(|m| m.remove("annotations"));
        back["metadata"]["name"] = json!("renamed");
        merge(&mut full, back, &r).expect("merge");
        assert_eq!(full["spec"]["ports"][0]["nodePort"], 31000);
        assert_eq!(full["metadata"].get("annotations"), None, "left out means removed");
        assert_eq!(full["metadata"]["name"], "web", "identity is not merged");
        assert_eq!(full["metadata"]["labels"], json!({"a": "1"}), "outside the reads: untouched");
        assert_eq!(full["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn merge_creates_missing_parents() {
        let mut full = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        merge(&mut full, json!({"metadata": {"annotations": {"k": "v"}}}), &reads(&["/metadata/annotations"]))
            .expect("merge");
        assert_eq!(full["metadata"]["annotations"], json!({"k": "v"}));
    }

    /// Every overlap of a read with the identity paths: equal to one, a parent of some
    /// (`/metadata`, the root `/`), a child of one, a sibling, unrelated.
    const OVERLAPS: [&str; 11] = [
        "/apiVersion",
        "/kind",
        "/metadata/name",
        "/metadata/namespace",
        "/metadata",
        "/",
        "/metadata/name/x",
        "/kind/x",
        "/metadata/labels",
        "/spec",
        "/absent",
    ];

    #[test]
    fn a_read_sends_identity_and_the_whole_subtree_it_names_whatever_it_overlaps() {
        let svc = mk_svc();
        for read in OVERLAPS {
            let r = effective(&svc, &reads(&[read]));
            let sent: Value = serde_json::from_str(&project_text(&svc, &r)).expect("json");
            assert_eq!(sent, project(&svc, &r), "{read}: the text is the projection");
            for id in IDENTITY {
                assert_eq!(sent.pointer(id), svc.pointer(id), "{read}: identity {id} is sent");
            }
            let at = read_pointer(read);
            assert_eq!(sent.pointer(at), svc.pointer(at), "{read}: the whole subtree is sent");
        }
        let metadata = project_text(&svc, &reads(&["/metadata"]));
        assert!(metadata.contains(r#""labels":{"a":"1"}"#) && metadata.contains(r#""annotations""#), "{metadata}");
        let root: Value = serde_json::from_str(&project_text(&svc, &effective(&svc, &reads(&["/"])))).expect("json");
        assert_eq!(root, svc, "the root read sends the whole object");
    }

    #[test]
    fn returning_what_was_sent_changes_nothing_whatever_the_read_overlaps() {
        for read in OVERLAPS {
            let svc = mk_svc();
            let r = effective(&svc, &reads(&[read]));
            let mut full = svc.clone();
            merge(&mut full, project(&svc, &r), &r).expect("merge");
            assert_eq!(full, svc, "{read}: nothing the plugin was not sent is dropped");
        }
    }

    #[test]
    fn identity_fields_keep_their_values_under_every_read_that_holds_them() {
        for read in OVERLAPS {
            let svc = mk_svc();
            let r = effective(&svc, &reads(&[read]));
            let mut back = project(&svc, &r);
            back["apiVersion"] = json!("v2");
            back["kind"] = json!("Other");
            back["metadata"]["name"] = json!("renamed");
            back["metadata"]["namespace"] = json!("elsewhere");
            let mut full = svc.clone();
            merge(&mut full, back, &r).expect("merge");
            assert_eq!(full, svc, "{read}: identity is not merged");
        }
    }

    #[test]
    fn a_metadata_read_keeps_labels_and_annotations_and_merges_the_change() {
        let svc = mk_svc();
        let r = effective(&svc, &reads(&["/metadata"]));
        assert_eq!(r, reads(&["/metadata"]));
        let mut back: Value = serde_json::from_str(&project_text(&svc, &r)).expect("json");
        back["metadata"]["labels"]["b"] = json!("2");
        let mut full = svc.clone();
        merge(&mut full, back, &r).expect("merge");
        assert_eq!(full["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(full["metadata"]["annotations"], json!({"x/y": "2"}));
        assert_eq!(full["spec"], svc["spec"], "outside the read: untouched");
    }

    #[test]
    fn the_root_read_is_the_whole_object_and_folds_every_other_read() {
        let svc = mk_svc();
        assert_eq!(effective(&svc, &reads(&["/spec", "/", "/metadata"])), reads(&[""]));
        let r = effective(&svc, &reads(&["/"]));
        let mut back = project(&svc, &r);
        back["status"] = json!({"x": 1});
        back.as_object_mut().map(|m| m.remove("spec"));
        let mut full = svc.clone();
        merge(&mut full, back, &r).expect("merge");
        assert_eq!(full["status"], json!({"x": 1}));
        assert_eq!(full.get("spec"), None, "sent and left out: removed");
        assert_eq!(full["metadata"], svc["metadata"]);
    }

    #[test]
    fn a_read_below_an_identity_field_sends_and_changes_nothing_more() {
        let svc = mk_svc();
        let r = effective(&svc, &reads(&["/metadata/name/x"]));
        assert_eq!(
            project(&svc, &r),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "n"}})
        );
        let bad = merge(&mut svc.clone(), json!({"metadata": {"name": {"x": 1}}}), &r);
        assert!(bad.is_err(), "name is a string: nothing can go below it");
        let mut full = svc.clone();
        merge(&mut full, json!({"metadata": {"name": "web"}}), &r).expect("merge");
        assert_eq!(full, svc);
    }

    #[test]
    fn a_cluster_scoped_object_gets_no_namespace_from_a_metadata_read() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"x": "1"}}});
        let r = effective(&ns, &reads(&["/metadata"]));
        let mut back = project(&ns, &r);
        back["metadata"]["namespace"] = json!("sneaked");
        let mut full = ns.clone();
        merge(&mut full, back, &r).expect("merge");
        assert_eq!(full, ns);
    }
}
