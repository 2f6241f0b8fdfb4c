//! JSON pointer (RFC 6901) get, set and copy-if-absent over `serde_json::Value`.

use serde_json::{Map, Value};

use std::borrow::Cow;

// `Value::pointer` unescapes every segment with two `str::replace` calls, each of which sets
// up a substring searcher and allocates: measured, that was most of a small rule's fuel. A
// segment without '~' (nearly all of them) is used as it is.
fn unescape(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn step<'a>(cur: &'a Value, segment: &str) -> Option<&'a Value> {
    match cur {
        Value::Object(map) => map.get(unescape(segment).as_ref()),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

/// The value at `ptr`, if any.
pub fn get<'a>(v: &'a Value, ptr: &str) -> Option<&'a Value> {
    if ptr.is_empty() {
        return Some(v);
    }
    ptr.strip_prefix('/')?.split('/').try_fold(v, step)
}

/// The value at `ptr`, mutably, if any.
pub fn get_mut<'a>(v: &'a mut Value, ptr: &str) -> Option<&'a mut Value> {
    if ptr.is_empty() {
        return Some(v);
    }
    ptr.strip_prefix('/')?.split('/').try_fold(v, |cur, segment| match cur {
        Value::Object(map) => map.get_mut(unescape(segment).as_ref()),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

/// Sets the value at `ptr`, creating missing objects on the way. Returns false when the path
/// runs through a scalar or an array index that does not exist.
pub fn set(v: &mut Value, ptr: &str, new: Value) -> bool {
    if ptr.is_empty() {
        *v = new;
        return true;
    }
    let Some(rest) = ptr.strip_prefix('/') else { return false };
    let segments: Vec<Cow<'_, str>> = rest.split('/').map(unescape).collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut cur = v;
    for seg in parents {
        cur = match cur {
            Value::Object(map) => map.entry(seg.as_ref()).or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => match seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(item) => item,
                None => return false,
            },
            _ => return false,
        };
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
    }
    match cur {
        Value::Object(map) => {
            map.insert(last.to_string(), new);
            true
        }
        Value::Array(items) => match last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
            Some(slot) => {
                *slot = new;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Copies the value at `ptr` from `from` into `to` when `to` has none (absent or null).
/// Returns whether a value was copied.
pub fn copy_if_absent(from: &Value, to: &mut Value, ptr: &str) -> bool {
    let absent = get(to, ptr).is_none_or(Value::is_null);
    match get(from, ptr) {
        Some(value) if absent && !value.is_null() => set(to, ptr, value.clone()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_creates_missing_objects() {
        let mut v = json!({"spec": {}});
        assert!(set(&mut v, "/spec/a/b", json!(1)));
        assert_eq!(v, json!({"spec": {"a": {"b": 1}}}));
    }

    #[test]
    fn set_refuses_to_walk_through_a_scalar() {
        let mut v = json!({"spec": 3});
        assert!(!set(&mut v, "/spec/a", json!(1)));
        assert_eq!(v, json!({"spec": 3}));
    }

    #[test]
    fn copy_if_absent_keeps_a_desired_value() {
        let existing = json!({"spec": {"clusterIP": "10.0.0.5"}});
        let mut desired = json!({"spec": {"clusterIP": "10.0.0.9"}});
        assert!(!copy_if_absent(&existing, &mut desired, "/spec/clusterIP"));
        assert_eq!(desired["spec"]["clusterIP"], "10.0.0.9");
        let mut bare = json!({"spec": {"clusterIP": null}});
        assert!(copy_if_absent(&existing, &mut bare, "/spec/clusterIP"));
        assert_eq!(bare["spec"]["clusterIP"], "10.0.0.5");
    }

    #[test]
    fn get_walks_objects_and_arrays_like_value_pointer() {
        let v = json!({"a/b": {"c~d": [1, {"e": 2}]}, "": 3});
        for p in ["", "/a~1b", "/a~1b/c~0d", "/a~1b/c~0d/1/e", "/a~1b/c~0d/2", "/x", "/", "nope", "/a~1b/c~0d/x"] {
            assert_eq!(get(&v, p), v.pointer(p), "{p}");
        }
        let mut m = v.clone();
        *get_mut(&mut m, "/a~1b/c~0d/0").unwrap() = json!(9);
        assert_eq!(m["a/b"]["c~d"][0], 9);
    }

    #[test]
    fn escaped_segments_are_unescaped() {
        let mut v = json!({});
        assert!(set(&mut v, "/metadata/annotations/a~1b", json!("x")));
        assert_eq!(v["metadata"]["annotations"]["a/b"], "x");
    }
}
