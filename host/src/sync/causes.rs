//! Reading the API's refusals: its dotted field paths as JSON pointers, which 422s are
//! immutable-field refusals, and which name a requested port or IP that is already taken.

use super::error::Cause;
use super::pointer;

/// `spec.ports[0].nodePort` -> `/spec/ports/0/nodePort`.
pub fn field_to_pointer(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        let name_end = rest.find('[').unwrap_or(rest.len());
        out.push('/');
        out.push_str(&pointer::escape(&rest[..name_end]));
        rest = &rest[name_end..];
        while let Some(open) = rest.find('[') {
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            out.push('/');
            out.push_str(&pointer::escape(rest[open + 1..close].trim_matches('"')));
            rest = rest.get(close + 1..).unwrap_or("");
        }
    }
    out
}

/// Whether one pointer is the other or lies under it.
fn related(a: &str, b: &str) -> bool {
    let under = |p: &str, q: &str| p == q || (p.starts_with(q) && p.as_bytes().get(q.len()) == Some(&b'/'));
    under(a, b) || under(b, a)
}

/// The fields of a 422 that are immutable-field refusals: the API named them in its structured
/// causes, and each is a field this update changes. A 422 on fields we did not touch is a
/// plain validation error, not an immutability one.
pub fn immutable_fields(causes: &[Cause], changed: &[String]) -> Option<Vec<String>> {
    if causes.is_empty() {
        return None;
    }
    let fields: Vec<String> = causes.iter().map(|c| field_to_pointer(&c.field)).collect();
    let all_changed = fields.iter().all(|f| !f.is_empty() && changed.iter().any(|c| related(c, f)));
    all_changed.then_some(fields)
}

/// A requested value the downstream cluster has already given to another object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The field, as a JSON pointer (`/spec/ports/0/nodePort`).
    pub field: String,
    /// The value asked for, as the API printed it (`30080`).
    pub value: String,
}

/// The first cause of a 422 that refuses a requested port or IP because another object holds
/// it (the apiserver's "provided port is already allocated" and "provided IP is already
/// allocated"). Unlike other 422s it can succeed later, when the holder lets go.
pub fn already_allocated(causes: &[Cause]) -> Option<Allocated> {
    causes.iter().find(|c| c.message.contains("is already allocated")).map(|c| {
        // "Invalid value: 30080: provided port is already allocated"
        let value = c
            .message
            .strip_prefix("Invalid value: ")
            .and_then(|rest| rest.split_once(": "))
            .map(|(v, _)| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Allocated { field: field_to_pointer(&c.field), value }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_node_port_is_read_from_the_cause() {
        let taken = Cause {
            reason: "FieldValueInvalid".into(),
            field: "spec.ports[1].nodePort".into(),
            message: "Invalid value: 30080: provided port is already allocated".into(),
        };
        let other = mk_cause("spec.selector");
        assert_eq!(
            already_allocated(&[other.clone(), taken]),
            Some(Allocated { field: "/spec/ports/1/nodePort".into(), value: "30080".into() })
        );
        assert_eq!(already_allocated(&[other]), None);
    }

    fn mk_cause(field: &str) -> Cause {
        Cause { reason: "FieldValueInvalid".into(), field: field.into(), message: String::new() }
    }

    #[test]
    fn api_field_paths_become_json_pointers() {
        assert_eq!(field_to_pointer("spec.ports[0].nodePort"), "/spec/ports/0/nodePort");
        assert_eq!(field_to_pointer("data"), "/data");
        assert_eq!(field_to_pointer("metadata.annotations[a/b]"), "/metadata/annotations/a~1b");
    }

    #[test]
    fn an_invalid_on_a_changed_field_is_immutability() {
        let changed = vec!["/data/key".to_string()];
        assert_eq!(immutable_fields(&[mk_cause("data")], &changed), Some(vec!["/data".to_string()]));
    }

    #[test]
    fn an_invalid_on_an_untouched_field_is_plain_validation() {
        let changed = vec!["/data/key".to_string()];
        assert_eq!(immutable_fields(&[mk_cause("spec.selector")], &changed), None);
        assert_eq!(immutable_fields(&[], &changed), None, "no causes, no claim");
    }
}
