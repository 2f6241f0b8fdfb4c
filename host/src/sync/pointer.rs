//! JSON pointers (RFC 6901) over `serde_json::Value`, read and escaped by `jsonptr`, with what
//! it does not serve: `set` as Kubernetes objects need it (a `null` on the way counts as
//! missing, lists never grow) and `*` wildcard patterns for config paths.

use serde_json::{Map, Value};

/// Why a pointer could not be parsed or applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a JSON pointer: no leading '/', or a '~' not followed by '0' or '1'.
    #[error("json pointer {pointer:?}: {source}")]
    Malformed {
        /// The offending pointer.
        pointer: String,
        /// What jsonptr found.
        source: jsonptr::ParseError,
    },
    /// An intermediate value is a scalar (or an array reached with a key), so nothing can go under it.
    #[error("cannot set {pointer:?}: the value at {at:?} is not an object or array")]
    NotAContainer {
        /// The pointer being set.
        pointer: String,
        /// The prefix of the pointer where the scalar sits.
        at: String,
    },
    /// An array segment is not a canonical index, or is past the end of the array.
    #[error("cannot set {pointer:?}: {segment:?} is not an index of the array at {at:?} (length {len})")]
    BadIndex {
        /// The pointer being set.
        pointer: String,
        /// The prefix of the pointer where the array sits.
        at: String,
        /// The segment that failed.
        segment: String,
        /// The array's length.
        len: usize,
    },
}

/// Result of pointer operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The wildcard segment of a pattern: matches any single key or index.
pub const WILDCARD: &str = "*";

/// Returns the value at `ptr`, or `None` if it does not exist or `ptr` is malformed.
pub fn get<'a>(v: &'a Value, ptr: &str) -> Option<&'a Value> {
    v.pointer(ptr)
}

/// Sets the value at `ptr`, creating missing intermediate objects; `""` replaces the root.
///
/// An intermediate `null` counts as missing, because Kubernetes objects often carry
/// `labels: null` and friends. Arrays are never grown: the index must already exist.
pub fn set(v: &mut Value, ptr: &str, new: Value) -> Result<()> {
    let segments = parse(ptr)?;
    let Some((last, parents)) = segments.split_last() else {
        *v = new;
        return Ok(());
    };
    let mut cur = v;
    for (depth, seg) in parents.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        cur = child_mut(cur, seg, ptr, &segments[..depth], true)?;
    }
    if cur.is_null() {
        *cur = Value::Object(Map::new());
    }
    match cur {
        Value::Object(map) => {
            map.insert(last.clone(), new);
            Ok(())
        }
        _ => {
            let slot = child_mut(cur, last, ptr, parents, false)?;
            *slot = new;
            Ok(())
        }
    }
}

/// Removes the value at `ptr` (an object key, or a list element, which shifts the later ones)
/// and returns it; `None` when there is nothing there or `ptr` is the root or malformed.
pub fn remove(v: &mut Value, ptr: &str) -> Option<Value> {
    let ptr = jsonptr::Pointer::parse(ptr).ok().filter(|p| !p.is_root())?;
    ptr.delete(v)
}

/// Steps into `seg` of `cur`; `create` inserts an empty object for a missing object key.
fn child_mut<'a>(cur: &'a mut Value, seg: &str, ptr: &str, at: &[String], create: bool) -> Result<&'a mut Value> {
    match cur {
        Value::Object(map) if create => Ok(map.entry(seg.to_owned()).or_insert_with(|| Value::Object(Map::new()))),
        Value::Array(items) => {
            let len = items.len();
            match parse_index(seg).filter(|&i| i < len) {
                Some(i) => Ok(&mut items[i]),
                None => Err(Error::BadIndex { pointer: ptr.to_owned(), at: join(at), segment: seg.to_owned(), len }),
            }
        }
        _ => Err(Error::NotAContainer { pointer: ptr.to_owned(), at: join(at) }),
    }
}

/// Splits a pointer into unescaped segments; `""` (the root) has none.
pub fn parse(ptr: &str) -> Result<Vec<String>> {
    let parsed = jsonptr::Pointer::parse(ptr).map_err(|source| Error::Malformed { pointer: ptr.to_owned(), source })?;
    Ok(parsed.tokens().map(|t| t.decoded().into_owned()).collect())
}

/// Escapes one key so it can be a pointer segment (`~` -> `~0`, `/` -> `~1`).
pub fn escape(segment: &str) -> String {
    jsonptr::Token::new(segment).encoded().to_owned()
}

/// Builds a pointer from unescaped segments; no segments gives the root, `""`.
pub fn join(segments: &[impl AsRef<str>]) -> String {
    jsonptr::PointerBuf::from_tokens(segments.iter().map(AsRef::as_ref)).to_string()
}

/// Parses an array index the RFC 6901 way: digits only, no leading zeros.
fn parse_index(seg: &str) -> Option<usize> {
    let canonical = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    if canonical { seg.parse().ok() } else { None }
}

/// Whether `pattern` matches `ptr` or one of its ancestors, i.e. covers the subtree at `ptr`.
pub fn is_prefix_pattern(pattern: &str, ptr: &str) -> bool {
    match (parse(pattern), parse(ptr)) {
        (Ok(pat), Ok(segs)) => pat.len() <= segs.len() && prefix_matches(&pat, &segs),
        _ => false,
    }
}

/// Whether the pattern segments match the first segments of `segs`.
pub(crate) fn prefix_matches(pat: &[String], segs: &[impl AsRef<str>]) -> bool {
    pat.iter().zip(segs).all(|(p, s)| p == WILDCARD || p == s.as_ref())
}

/// The concrete pointers of `v` that `pattern` matches; only paths that exist are returned.
pub fn expand(v: &Value, pattern: &str) -> Vec<String> {
    let Ok(pat) = parse(pattern) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut prefix = Vec::new();
    expand_into(v, &pat, &mut prefix, &mut out);
    out
}

fn expand_into(v: &Value, pat: &[String], prefix: &mut Vec<String>, out: &mut Vec<String>) {
    let Some((seg, rest)) = pat.split_first() else {
        out.push(join(prefix));
        return;
    };
    let mut visit = |key: String, child: &Value| {
        prefix.push(key);
        expand_into(child, rest, prefix, out);
        prefix.pop();
    };
    match v {
        Value::Object(map) if seg == WILDCARD => {
            map.iter().for_each(|(k, child)| visit(k.clone(), child));
        }
        Value::Object(map) => {
            if let Some(child) = map.get(seg) {
                visit(seg.clone(), child);
            }
        }
        Value::Array(items) if seg == WILDCARD => {
            items.iter().enumerate().for_each(|(i, child)| visit(i.to_string(), child));
        }
        Value::Array(items) => {
            if let Some(i) = parse_index(seg).filter(|&i| i < items.len()) {
                visit(seg.clone(), &items[i]);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_service(ports: &[(&str, Option<u16>)]) -> Value {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, node_port)| match node_port {
                Some(np) => json!({"name": name, "port": 80, "nodePort": np}),
                None => json!({"name": name, "port": 80}),
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": ports}})
    }

    #[test]
    fn escape_round_trips_through_join_and_parse() {
        let keys = ["a/b", "~x", "~1", "plain", "", "downsync.dev/managed-labels"];
        let ptr = join(&keys);
        assert_eq!(ptr, "/a~1b/~0x/~01/plain//downsync.dev~1managed-labels");
        assert_eq!(parse(&ptr).unwrap(), keys);
    }

    #[test]
    fn join_of_nothing_is_the_root() {
        assert_eq!(join(&[] as &[&str]), "");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn parse_rejects_pointers_without_leading_slash_and_bad_escapes() {
        assert!(matches!(parse("spec/x"), Err(Error::Malformed { .. })));
        for bad in ["/a~2", "/a~"] {
            let err = parse(bad).expect_err(bad);
            assert!(matches!(err, Error::Malformed { .. }) && err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn get_finds_escaped_keys_and_indexes() {
        let v = json!({"metadata": {"labels": {"app.kubernetes.io/name": "web"}}, "l": [1, 2]});
        assert_eq!(get(&v, "/metadata/labels/app.kubernetes.io~1name"), Some(&json!("web")));
        assert_eq!(get(&v, "/l/1"), Some(&json!(2)));
        assert_eq!(get(&v, "/l/2"), None);
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let mut v = json!({"metadata": {"name": "x", "labels": null}});
        set(&mut v, "/metadata/annotations/a~1b", json!("1")).unwrap();
        set(&mut v, "/metadata/labels/app", json!("web")).unwrap();
        set(&mut v, "/spec/template/spec/x", json!(true)).unwrap();
        assert_eq!(
            v,
            json!({
                "metadata": {"name": "x", "labels": {"app": "web"}, "annotations": {"a/b": "1"}},
                "spec": {"template": {"spec": {"x": true}}}
            })
        );
    }

    #[test]
    fn set_replaces_array_elements_and_the_root() {
        let mut v = json!({"l": [1, {"a": 1}]});
        set(&mut v, "/l/0", json!(9)).unwrap();
        set(&mut v, "/l/1/b", json!(2)).unwrap();
        assert_eq!(v, json!({"l": [9, {"a": 1, "b": 2}]}));
        set(&mut v, "", json!("root")).unwrap();
        assert_eq!(v, json!("root"));
    }

    #[test]
    fn set_errors_naming_the_pointer_under_a_scalar() {
        let mut v = json!({"spec": {"replicas": 3}});
        let err = set(&mut v, "/spec/replicas/x", json!(1)).unwrap_err();
        assert!(matches!(err, Error::NotAContainer { ref at, .. } if at == "/spec/replicas"));
        assert!(err.to_string().contains("\"/spec/replicas/x\""), "{err}");
        assert_eq!(v, json!({"spec": {"replicas": 3}}));
    }

    #[test]
    fn set_errors_on_out_of_range_or_non_numeric_index() {
        let mut v = json!({"l": [1]});
        let err = set(&mut v, "/l/1", json!(2)).unwrap_err();
        assert!(matches!(err, Error::BadIndex { len: 1, .. }));
        assert!(err.to_string().contains("\"/l/1\""), "{err}");
        assert!(matches!(set(&mut v, "/l/x/y", json!(2)), Err(Error::BadIndex { .. })));
        assert!(matches!(set(&mut v, "/l/01", json!(2)), Err(Error::BadIndex { .. })));
        assert!(matches!(set(&mut v, "l", json!(2)), Err(Error::Malformed { .. })));
        assert_eq!(v, json!({"l": [1]}));
    }

    #[test]
    fn prefix_pattern_covers_descendants_not_ancestors() {
        assert!(is_prefix_pattern("/spec/ports/*/nodePort", "/spec/ports/0/nodePort"));
        assert!(is_prefix_pattern("/status", "/status/conditions/0"));
        assert!(is_prefix_pattern("/status", "/status"));
        assert!(!is_prefix_pattern("/status", "/statusx"));
        assert!(!is_prefix_pattern("/spec/ports/*/nodePort", "/spec/ports/0"));
        assert!(!is_prefix_pattern("spec", "/spec"));
    }

    #[test]
    fn expand_lists_existing_matches_only() {
        let svc = mk_service(&[("http", Some(30080)), ("admin", None), ("https", Some(30443))]);
        assert_eq!(expand(&svc, "/spec/ports/*/nodePort"), ["/spec/ports/0/nodePort", "/spec/ports/2/nodePort"]);
        assert_eq!(expand(&svc, "/spec/clusterIP"), Vec::<String>::new());
        assert_eq!(expand(&svc, "/kind"), ["/kind"]);
        assert_eq!(expand(&svc, "/spec/ports/1/name"), ["/spec/ports/1/name"]);
        assert_eq!(expand(&svc, "bad"), Vec::<String>::new());
    }

    #[test]
    fn expand_escapes_keys_it_found_under_a_wildcard() {
        let v = json!({"metadata": {"labels": {"a/b": "1", "c": "2"}}});
        let mut got = expand(&v, "/metadata/labels/*");
        got.sort();
        assert_eq!(got, ["/metadata/labels/a~1b", "/metadata/labels/c"]);
    }
}
