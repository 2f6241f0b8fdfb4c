//! List merge by key: carry fields of list items from one list to another, matching items by
//! a key such as (port, protocol) or name.

use serde_json::Value;

/// The key of an item: the values of `fields`, or None if any is missing.
fn key_of(item: &Value, fields: &[&str], defaults: &[(&str, Value)]) -> Option<Vec<Value>> {
    fields
        .iter()
        .map(|f| item.get(*f).cloned().or_else(|| defaults.iter().find(|(name, _)| name == f).map(|(_, v)| v.clone())))
        .collect()
}

/// For each item of `to` (an array), finds the item of `from` with the same key and lets
/// `merge(from_item, to_item)` carry fields over. `defaults` fill key fields an item omits
/// (a Service port without `protocol` is TCP). Items without a match are left alone.
pub fn merge_by_key(
    from: Option<&Value>,
    to: Option<&mut Value>,
    key: &[&str],
    defaults: &[(&str, Value)],
    mut merge: impl FnMut(&Value, &mut Value),
) {
    let (Some(Value::Array(from)), Some(Value::Array(to))) = (from, to) else { return };
    for item in to.iter_mut() {
        let Some(k) = key_of(item, key, defaults) else { continue };
        if let Some(src) = from.iter().find(|f| key_of(f, key, defaults).as_ref() == Some(&k)) {
            merge(src, item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_match_by_port_and_protocol_with_tcp_default() {
        let existing = json!([{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]);
        let mut desired = json!([{"port": 53, "protocol": "UDP"}, {"port": 80}]);
        merge_by_key(
            Some(&existing),
            Some(&mut desired),
            &["port", "protocol"],
            &[("protocol", json!("TCP"))],
            |src, dst| {
                crate::pointer::copy_if_absent(src, dst, "/nodePort");
            },
        );
        assert_eq!(
            desired,
            json!([{"port": 53, "protocol": "UDP", "nodePort": 30053}, {"port": 80, "nodePort": 30080}])
        );
    }
}
