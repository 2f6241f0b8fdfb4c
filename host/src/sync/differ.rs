//! The one differ: which fields differ between two objects, walked once by one [`Walk`].
//!
//! Two questions are asked of it. [`diff`]: what writing the desired object would change in the
//! live downstream one, with values, comparing only what the desired object sets. [`delta`]:
//! which fields two versions of one object differ in, as paths without values (shadow
//! comparison and the explain record, where values may be Secret data), both ways and bounded
//! by [`MAX_PATHS`].

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::ownership::SERVER_METADATA;
use super::pointer;

/// One changed field. `old == None` is an addition, `new == None` a removal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// JSON pointer to the field.
    pub path: String,
    /// The live downstream value, if the field exists there.
    pub old: Option<Value>,
    /// The value downsync would write, if any.
    pub new: Option<Value>,
}

/// The changes between two objects, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    /// The changed fields, sorted by path (array indexes numerically).
    pub changes: Vec<FieldChange>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many fields changed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The changed paths, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.changes.iter().map(|c| c.path.as_str()).collect()
    }
}

/// One line per change: `~ path: old -> new`, `+ path: new`, `- path: old`; nothing if empty.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match (&c.old, &c.new) {
                (Some(old), Some(new)) => write!(f, "~ {}: {old} -> {new}", c.path)?,
                (None, Some(new)) => write!(f, "+ {}: {new}", c.path)?,
                (Some(old), None) => write!(f, "- {}: {old}", c.path)?,
                (None, None) => write!(f, "~ {}", c.path)?,
            }
        }
        Ok(())
    }
}

/// Tuning for [`diff`].
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Extra pointer patterns (with `*` segments) to ignore, each with everything under it.
    pub ignore: Vec<String>,
}

/// At most this many paths are reported by [`delta`]; the walk stops there. A rule that rewrites
/// more fields than this at once is reported as such (see [`Delta::truncated`]).
pub const MAX_PATHS: usize = 32;

/// The paths where two objects differ, without values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// JSON pointers to the differing fields (sorted as [`diff`] sorts); `""` when the two differ
    /// at the top.
    pub paths: Vec<String>,
    /// More than [`MAX_PATHS`] fields differ; only the first are listed.
    pub truncated: bool,
}

impl Delta {
    /// Whether the two objects are equal.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// The paths where `before` and `after` differ: a field on one side only counts, and a list of
/// another length is one path, not one per element. Nothing is ignored and no value is kept.
pub fn delta(before: &Value, after: &Value) -> Delta {
    let mut walk = Walk { ignore: &[], path: Vec::new(), changes: Vec::new(), question: Question::Paths };
    walk.value(before, after);
    let truncated = walk.changes.len() > MAX_PATHS;
    walk.changes.truncate(MAX_PATHS);
    Delta { paths: sorted(walk.changes).into_iter().map(|c| c.path).collect(), truncated }
}

/// Whether `path` is `prefix` or lies under it (`/spec` covers `/spec/clusterIP`).
pub fn covers(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        || prefix.is_empty()
}

/// Lists the fields where writing `desired` would change `existing`.
///
/// Status and the server-set metadata ([`SERVER_METADATA`]) are never compared: the API
/// server owns them. Only fields that `desired` sets are compared: anything only in `existing` is a server
/// default or was added downstream, and writing `desired` through preservation keeps it.
/// The one way to ask for a removal is an explicit `null` for a map key.
pub fn diff(existing: &Value, desired: &Value, opts: &DiffOptions) -> Diff {
    let server_owned = std::iter::once(vec!["status".to_owned()])
        .chain(SERVER_METADATA.iter().map(|f| vec!["metadata".to_owned(), (*f).to_owned()]));
    let ignore: Vec<Vec<String>> = server_owned
        // A malformed pattern cannot match a real path, so dropping it changes nothing.
        .chain(opts.ignore.iter().filter_map(|p| pointer::parse(p).ok()))
        .collect();
    let mut walk = Walk { ignore: &ignore, path: Vec::new(), changes: Vec::new(), question: Question::Write };
    walk.value(existing, desired);
    Diff { changes: sorted(walk.changes) }
}

/// The changes in path order.
fn sorted(mut keyed: Vec<(Vec<String>, FieldChange)>) -> Vec<FieldChange> {
    keyed.sort_by(|(a, _), (b, _)| compare_paths(a, b));
    keyed.into_iter().map(|(_, c)| c).collect()
}

/// What a walk is asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Question {
    /// [`diff`]: the fields the desired side sets, with values.
    Write,
    /// [`delta`]: fields on either side, without values, the first [`MAX_PATHS`] and one more.
    Paths,
}

/// The state of one traversal.
struct Walk<'a> {
    ignore: &'a [Vec<String>],
    path: Vec<String>,
    changes: Vec<(Vec<String>, FieldChange)>,
    question: Question,
}

impl Walk<'_> {
    fn ignored(&self) -> bool {
        self.ignore.iter().any(|pat| pat.len() <= self.path.len() && pointer::prefix_matches(pat, &self.path))
    }

    fn record(&mut self, old: Option<&Value>, new: Option<&Value>) {
        let (old, new) = match self.question {
            Question::Write => (old.cloned(), new.cloned()),
            Question::Paths => (None, None),
        };
        self.changes.push((self.path.clone(), FieldChange { path: pointer::join(&self.path), old, new }));
    }

    /// Whether the walk has all it was asked for.
    fn full(&self) -> bool {
        self.question == Question::Paths && self.changes.len() > MAX_PATHS
    }

    fn value(&mut self, existing: &Value, desired: &Value) {
        if self.full() || self.ignored() {
            return;
        }
        match (existing, desired) {
            (Value::Object(e), Value::Object(d)) => self.object(e, d),
            (Value::Array(e), Value::Array(d)) if e.len() == d.len() => {
                for (i, (ev, dv)) in e.iter().zip(d).enumerate() {
                    self.path.push(i.to_string());
                    self.value(ev, dv);
                    self.path.pop();
                }
            }
            // A null downstream reads better as a missing field than as a type change.
            (Value::Null, _) if !desired.is_null() => self.record(None, Some(desired)),
            _ if json_eq(existing, desired) => {}
            _ => self.record(Some(existing), Some(desired)),
        }
    }

    fn object(&mut self, existing: &Map<String, Value>, desired: &Map<String, Value>) {
        for (key, dv) in desired {
            self.path.push(key.clone());
            match existing.get(key) {
                _ if self.ignored() => {}
                Some(ev) if dv.is_null() && !ev.is_null() => self.record(Some(ev), None),
                Some(ev) => self.value(ev, dv),
                None if dv.is_null() && self.question == Question::Write => {}
                None => self.record(None, Some(dv)),
            }
            self.path.pop();
        }
        if self.question == Question::Paths {
            for key in existing.keys().filter(|k| !desired.contains_key(*k)) {
                if self.full() {
                    return;
                }
                self.path.push(key.clone());
                self.record(existing.get(key), None);
                self.path.pop();
            }
        }
    }
}

/// Orders paths segment by segment, array indexes numerically, so `/l/2` sorts before `/l/10`.
fn compare_paths(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(i), Ok(j)) => i.cmp(&j).then_with(|| x.cmp(y)),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

/// Deep equality where numbers compare by value, so `1 == 1.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
                i == j
            } else if let (Some(i), Some(j)) = (x.as_u64(), y.as_u64()) {
                i == j
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(i, j)| json_eq(i, j)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_deployment(replicas: u32, containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": containers}}
            }
        })
    }

    fn mk_container(name: &str, image: &str) -> Value {
        json!({"name": name, "image": image})
    }

    /// What the API server returns for a deployment: defaults, status, metadata noise.
    fn mk_live(mut obj: Value) -> Value {
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!("4711"));
        meta.insert("uid".into(), json!("0b1c"));
        meta.insert("generation".into(), json!(3));
        meta.insert("creationTimestamp".into(), json!("2024-01-01T00:00:00Z"));
        meta.insert("managedFields".into(), json!([{"manager": "kubectl"}]));
        obj["spec"]["progressDeadlineSeconds"] = json!(600);
        for c in obj["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap() {
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["imagePullPolicy"] = json!("IfNotPresent");
        }
        obj["status"] = json!({"readyReplicas": 1});
        obj
    }

    fn mk_configmap(name: &str, data: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns"},
            "data": data
        })
    }

    #[test]
    fn identical_objects_have_no_changes() {
        let d = mk_deployment(1, json!([mk_container("app", "nginx:1")]));
        let diff = diff(&d, &d, &DiffOptions::default());
        assert!(diff.is_empty());
        assert_eq!(diff.to_string(), "");
    }

    #[test]
    fn differ_ignores_server_defaults_in_containers() {
        let desired = mk_deployment(1, json!([mk_container("app", "nginx:1")]));
        let live = mk_live(desired.clone());
        assert_eq!(diff(&live, &desired, &DiffOptions::default()), Diff::default());
    }

    #[test]
    fn differ_reports_replicas_change() {
        let desired = mk_deployment(3, json!([mk_container("app", "nginx:1")]));
        let live = mk_live(mk_deployment(1, json!([mk_container("app", "nginx:1")])));
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(
            diff.changes,
            [FieldChange { path: "/spec/replicas".into(), old: Some(json!(1)), new: Some(json!(3)) }]
        );
        assert_eq!(diff.to_string(), "~ /spec/replicas: 1 -> 3");
    }

    #[test]
    fn differ_reports_image_change_inside_a_same_length_array() {
        let desired = mk_deployment(1, json!([mk_container("app", "nginx:2")]));
        let live = mk_live(mk_deployment(1, json!([mk_container("app", "nginx:1")])));
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.paths(), ["/spec/template/spec/containers/0/image"]);
    }

    #[test]
    fn arrays_of_different_length_change_as_a_whole() {
        let desired = mk_deployment(1, json!([mk_container("app", "nginx:1"), mk_container("sidecar", "envoy")]));
        let live = mk_live(mk_deployment(1, json!([mk_container("app", "nginx:1")])));
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.paths(), ["/spec/template/spec/containers"]);
        assert_eq!(diff.changes[0].new, Some(desired["spec"]["template"]["spec"]["containers"].clone()));
    }

    #[test]
    fn differ_ignores_configured_path() {
        let desired = mk_deployment(3, json!([mk_container("app", "nginx:2")]));
        let live = mk_live(mk_deployment(1, json!([mk_container("app", "nginx:1")])));
        let opts =
            DiffOptions { ignore: vec!["/spec/replicas".into(), "/spec/template/spec/containers/*/image".into()] };
        assert!(diff(&live, &desired, &opts).is_empty());
        let only_replicas = DiffOptions { ignore: vec!["/spec/replicas".into()] };
        assert_eq!(diff(&live, &desired, &only_replicas).paths(), ["/spec/template/spec/containers/0/image"]);
    }

    #[test]
    fn labels_added_downstream_are_not_changes() {
        let desired = mk_configmap("cfg", json!({"a": "1"}));
        let mut live = desired.clone();
        live["metadata"]["labels"] = json!({"team": "ops"});
        live["metadata"]["annotations"] = json!({"note": "x"});
        assert!(diff(&live, &desired, &DiffOptions::default()).is_empty());
    }

    #[test]
    fn added_and_explicitly_nulled_keys_are_reported() {
        let live = mk_configmap("cfg", json!({"a": "1", "gone": "y"}));
        let desired = mk_configmap("cfg", json!({"a": "1", "b": "x", "gone": null, "never": null}));
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.paths(), ["/data/b", "/data/gone"]);
        assert_eq!(diff.to_string(), "+ /data/b: \"x\"\n- /data/gone: \"y\"");
    }

    #[test]
    fn type_mismatch_is_one_change_at_that_path() {
        let live = mk_configmap("cfg", json!({"a": {"nested": true}}));
        let desired = mk_configmap("cfg", json!({"a": "flat"}));
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.changes.len(), 1);
        assert_eq!(diff.changes[0].old, Some(json!({"nested": true})));
        assert_eq!(diff.changes[0].new, Some(json!("flat")));
    }

    #[test]
    fn numbers_compare_by_value() {
        let live = json!({"spec": {"replicas": 1, "ratio": 0.5}});
        let desired = json!({"spec": {"replicas": 1.0, "ratio": 0.5}});
        assert!(diff(&live, &desired, &DiffOptions::default()).is_empty());
        assert!(!diff(&live, &json!({"spec": {"replicas": 1.5}}), &DiffOptions::default()).is_empty());
    }

    #[test]
    fn server_managed_fields_in_desired_are_ignored() {
        let live = mk_configmap("cfg", json!({}));
        let mut desired = live.clone();
        desired["metadata"]["resourceVersion"] = json!("1");
        desired["metadata"]["uid"] = json!("upstream-uid");
        desired["status"] = json!({"phase": "x"});
        assert!(diff(&live, &desired, &DiffOptions::default()).is_empty());
    }

    #[test]
    fn changes_are_sorted_with_numeric_indexes() {
        let live = json!({"l": (0..11).collect::<Vec<_>>(), "a": 1});
        let mut desired = live.clone();
        desired["l"][10] = json!(100);
        desired["l"][2] = json!(200);
        desired["a"] = json!(2);
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.paths(), ["/a", "/l/2", "/l/10"]);
        assert_eq!(diff.len(), 3);
    }

    #[test]
    fn escaped_keys_get_escaped_paths() {
        let live = json!({"metadata": {"labels": {"app.kubernetes.io/name": "a"}}});
        let desired = json!({"metadata": {"labels": {"app.kubernetes.io/name": "b"}}});
        let diff = diff(&live, &desired, &DiffOptions::default());
        assert_eq!(diff.paths(), ["/metadata/labels/app.kubernetes.io~1name"]);
    }

    // delta

    fn mk_svc(ip: Option<&str>, port: u64) -> Value {
        let mut v = json!({"kind": "Service", "spec": {"ports": [{"port": port, "nodePort": 30080}]}});
        if let Some(ip) = ip {
            v["spec"]["clusterIP"] = json!(ip);
        }
        v
    }

    fn sorted(d: &Delta) -> Vec<String> {
        let mut p = d.paths.clone();
        p.sort();
        p
    }

    #[test]
    fn equal_objects_have_no_delta() {
        assert!(delta(&mk_svc(Some("10.0.0.1"), 80), &mk_svc(Some("10.0.0.1"), 80)).is_empty());
    }

    #[test]
    fn added_removed_and_changed_fields_are_listed_without_values() {
        let d = delta(&mk_svc(None, 80), &mk_svc(Some("10.0.0.1"), 81));
        assert_eq!(sorted(&d), vec!["/spec/clusterIP", "/spec/ports/0/port"]);
        let back = delta(&mk_svc(Some("10.0.0.1"), 80), &mk_svc(None, 80));
        assert_eq!(back.paths, vec!["/spec/clusterIP"]);
        assert!(!d.truncated);
    }

    #[test]
    fn a_list_of_another_length_is_one_path_and_keys_are_escaped() {
        let a = json!({"metadata": {"annotations": {"a/b": "1"}}, "items": [1, 2]});
        let b = json!({"metadata": {"annotations": {"a/b": "2"}}, "items": [1, 2, 3]});
        assert_eq!(sorted(&delta(&a, &b)), vec!["/items", "/metadata/annotations/a~1b"]);
    }

    #[test]
    fn the_walk_stops_after_max_paths() {
        let a: serde_json::Map<String, Value> = (0..100).map(|i| (format!("k{i:03}"), json!(i))).collect();
        let d = delta(&Value::Object(a), &json!({}));
        assert_eq!(d.paths.len(), MAX_PATHS);
        assert!(d.truncated);
    }

    #[test]
    fn covers_is_by_whole_segments() {
        assert!(covers("/spec", "/spec/clusterIP"));
        assert!(covers("/spec/clusterIP", "/spec/clusterIP"));
        assert!(!covers("/spec/cluster", "/spec/clusterIP"));
        assert!(covers("", "/anything"));
        assert!(!covers("/spec/clusterIP", "/spec"));
    }
}
