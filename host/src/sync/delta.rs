//! Which fields differ between two versions of one object, as JSON pointers, without values.
//!
//! Shadow comparison and the explain record need the paths a rule changed, and never the values
//! (they may be Secret data). Unlike [`super::differ`], the comparison is symmetric (a field
//! only on one side is a difference) and stops at the first level where the two sides differ in
//! type or list length, so one replaced list is one path, not one per element.

use serde_json::Value;

use super::pointer;

/// At most this many paths are reported; the walk stops there. A rule that rewrites more fields
/// than this at once is reported as such (see [`Delta::truncated`]).
pub const MAX_PATHS: usize = 32;

/// The paths where two objects differ, sorted as found (maps in key order).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// JSON pointers to the differing fields; `""` when the two differ at the top.
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

/// The paths where `before` and `after` differ.
pub fn delta(before: &Value, after: &Value) -> Delta {
    let mut walk = Walk { path: Vec::new(), out: Delta::default() };
    walk.value(before, after);
    walk.out
}

struct Walk {
    path: Vec<String>,
    out: Delta,
}

impl Walk {
    fn record(&mut self) {
        if self.out.paths.len() == MAX_PATHS {
            self.out.truncated = true;
        } else {
            self.out.paths.push(pointer::join(&self.path));
        }
    }

    fn value(&mut self, a: &Value, b: &Value) {
        if self.out.truncated {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, va) in x {
                    self.path.push(k.clone());
                    match y.get(k) {
                        Some(vb) => self.value(va, vb),
                        None => self.record(),
                    }
                    self.path.pop();
                }
                for k in y.keys().filter(|k| !x.contains_key(*k)) {
                    self.path.push(k.clone());
                    self.record();
                    self.path.pop();
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    self.path.push(i.to_string());
                    self.value(va, vb);
                    self.path.pop();
                }
            }
            _ if a == b => {}
            _ => self.record(),
        }
    }
}

/// Whether `path` is `prefix` or lies under it (`/spec` covers `/spec/clusterIP`).
pub fn covers(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        || prefix.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
