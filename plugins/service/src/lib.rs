//! Built-in rule: keeps what the downstream cluster allocated to a Service.
//!
//! The downstream apiserver allocates `clusterIP`, `clusterIPs`, `ipFamilies`, `ipFamilyPolicy`,
//! each port's `nodePort` and `healthCheckNodePort`. Upstream does not know them, so an update
//! that omits them would ask for new ones (or fail). Each is copied from the live object only
//! when the desired object does not set it (copy-if-absent), and the differ ignores them.
//!
//! - Cluster IPs and IP families are not kept when the desired type is `ExternalName`.
//! - A port's `nodePort` is matched by (port, protocol) — protocol defaults to TCP — and
//!   failing that by name; it is kept only when the desired type is `NodePort` or
//!   `LoadBalancer` (never for `ClusterIP`).
//! - `healthCheckNodePort` is kept only for a desired `LoadBalancer`.
//! - `/status/loadBalancer` is status, which the core keeps anyway.
//!
//! An upstream that is itself a Kubernetes cluster has allocated these fields too, for its own
//! network; `transform` drops them from the desired object so that they never travel. What a
//! client asked for upstream stays: with the upstream intent known (rules 0.2.0, from
//! `managedFields`), a `nodePort`, `clusterIP` or `healthCheckNodePort` that a client set is
//! kept and sent downstream, and only server-set ones are dropped (server-set IP families
//! too). With the intent unknown, every upstream allocation is dropped except a headless
//! Service's `clusterIP: None`, which is always a request.

use downsync_plugin_sdk::{Decision, Hook, Info, Intent, Rule, Value, pointer};

/// The fields this rule keeps, as scope patterns (and diff-ignore paths).
pub const KEPT: [&str; 6] = [
    "/spec/clusterIP",
    "/spec/clusterIPs",
    "/spec/ipFamilies",
    "/spec/ipFamilyPolicy",
    "/spec/ports/*/nodePort",
    "/spec/healthCheckNodePort",
];

/// Keeps a Service's allocated fields.
pub struct ServiceRule;

impl Rule for ServiceRule {
    fn describe() -> Info {
        let info = Info::new("service", "0.2.0")
            .kind("", "Service")
            .hooks(&[Hook::Transform, Hook::Preserve, Hook::IgnorePaths])
            .reads("/spec");
        KEPT.iter().fold(info, |info, p| info.scope(p))
    }

    fn transform(mut desired: Value, intent: &Intent) -> Result<Value, String> {
        drop_upstream_allocations(&mut desired, intent);
        Ok(desired)
    }

    fn preserve(existing: Value, mut desired: Value, _intent: &Intent) -> Result<Decision, String> {
        keep_allocated(&existing, &mut desired);
        Ok(Decision::Apply(desired))
    }

    fn ignore_paths(group: &str, kind: &str) -> Vec<String> {
        if group.is_empty() && kind == "Service" { KEPT.iter().map(|p| (*p).to_string()).collect() } else { Vec::new() }
    }
}

/// The desired Service type; Kubernetes defaults it to `ClusterIP`.
fn service_type(svc: &Value) -> &str {
    pointer::get(svc, "/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP")
}

/// Removes what the upstream cluster allocated: cluster IPs (except `None`), node ports and the
/// health-check node port; with a known intent, only those no client asked for, and the IP
/// families too when the server chose them.
pub fn drop_upstream_allocations(svc: &mut Value, intent: &Intent) {
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let keep = |field: &str| intent.requested(&format!("/spec/{field}"));
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    for field in ["clusterIP", "clusterIPs"] {
        if !headless && !keep(field) {
            spec.remove(field);
        }
    }
    for field in ["ipFamilies", "ipFamilyPolicy"] {
        if intent.is_server_set(&format!("/spec/{field}")) {
            spec.remove(field);
        }
    }
    if !keep("healthCheckNodePort") {
        spec.remove("healthCheckNodePort");
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for (i, port) in ports.iter_mut().enumerate() {
            if let Some(port) = port.as_object_mut()
                && !intent.requested(&format!("/spec/ports/{i}/nodePort"))
            {
                port.remove("nodePort");
            }
        }
    }
}

/// Copies the allocated fields of `existing` into `desired` where `desired` leaves them out.
pub fn keep_allocated(existing: &Value, desired: &mut Value) {
    let ty = service_type(desired).to_string();
    if ty != "ExternalName" {
        for p in ["/spec/clusterIP", "/spec/clusterIPs", "/spec/ipFamilies", "/spec/ipFamilyPolicy"] {
            pointer::copy_if_absent(existing, desired, p);
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        keep_node_ports(existing, desired);
    }
    if ty == "LoadBalancer" {
        pointer::copy_if_absent(existing, desired, "/spec/healthCheckNodePort");
    }
}

fn port_key(port: &Value) -> (Option<&Value>, &str) {
    (port.get("port"), port.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
}

fn keep_node_ports(existing: &Value, desired: &mut Value) {
    let Some(Value::Array(live)) = pointer::get(existing, "/spec/ports") else { return };
    let Some(Value::Array(ports)) = pointer::get_mut(desired, "/spec/ports") else { return };
    for port in ports.iter_mut() {
        if port.get("nodePort").is_some_and(|v| !v.is_null()) {
            continue;
        }
        let key = port_key(port);
        let name = port.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let by_key = live.iter().find(|l| key.0.is_some() && port_key(l) == key);
        let by_name = || live.iter().find(|l| name.is_some() && l.get("name").and_then(Value::as_str) == name);
        if let Some(src) = by_key.or_else(by_name) {
            pointer::copy_if_absent(src, port, "/nodePort");
        }
    }
}

downsync_plugin_sdk::export_rule!(ServiceRule);

#[cfg(test)]
mod tests {
    use super::*;
    use downsync_plugin_sdk::json;

    fn mk_service(ty: Option<&str>, spec: Value) -> Value {
        let mut svc =
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "n"}, "spec": spec});
        if let Some(ty) = ty {
            svc["spec"]["type"] = json!(ty);
        }
        svc
    }

    fn mk_live(ty: &str) -> Value {
        mk_service(
            Some(ty),
            json!({
                "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "healthCheckNodePort": 32000,
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}
                ]
            }),
        )
    }

    fn preserve(existing: &Value, desired: Value) -> Value {
        match ServiceRule::preserve(existing.clone(), desired, &Intent::unknown()).unwrap() {
            Decision::Apply(v) => v,
            other => panic!("expected apply, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ips_and_families_are_kept_when_desired_omits_them() {
        let out = preserve(&mk_live("ClusterIP"), mk_service(None, json!({"ports": [{"port": 80}]})));
        assert_eq!(out["spec"]["clusterIP"], "10.0.0.7");
        assert_eq!(out["spec"]["clusterIPs"], json!(["10.0.0.7"]));
        assert_eq!(out["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(out["spec"]["ipFamilyPolicy"], "SingleStack");
    }

    #[test]
    fn upstream_allocations_are_dropped_but_a_headless_request_stays() {
        let mut svc = mk_live("NodePort");
        drop_upstream_allocations(&mut svc, &Intent::unknown());
        assert_eq!(svc["spec"].get("clusterIP"), None);
        assert_eq!(svc["spec"].get("clusterIPs"), None);
        assert_eq!(svc["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(svc["spec"].get("healthCheckNodePort"), None);
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]), "a family is a request, not an allocation");
        let mut headless = mk_service(None, json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        drop_upstream_allocations(&mut headless, &Intent::unknown());
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn with_intent_requested_fields_travel_and_server_set_ones_do_not() {
        // kubectl asked for nodePort 30080 on port 0; the server allocated the rest.
        let intent = Intent::server_set(vec![
            "/spec/clusterIP".into(),
            "/spec/clusterIPs".into(),
            "/spec/ipFamilies".into(),
            "/spec/ipFamilyPolicy".into(),
            "/spec/ports/1/nodePort".into(),
            "/spec/healthCheckNodePort".into(),
        ]);
        let mut svc = mk_live("LoadBalancer");
        drop_upstream_allocations(&mut svc, &intent);
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080, "requested");
        assert_eq!(svc["spec"]["ports"][1].get("nodePort"), None, "allocated");
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "healthCheckNodePort"] {
            assert_eq!(svc["spec"].get(field), None, "{field} was server-set");
        }
        let asked_ip = Intent::server_set(vec!["/spec/clusterIPs".into()]);
        let mut svc = mk_live("ClusterIP");
        drop_upstream_allocations(&mut svc, &asked_ip);
        assert_eq!(svc["spec"]["clusterIP"], "10.0.0.7", "a requested clusterIP travels");
        assert_eq!(svc["spec"].get("clusterIPs"), None);
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]), "asked for (not server-set)");
    }

    #[test]
    fn a_desired_cluster_ip_wins() {
        let out = preserve(&mk_live("ClusterIP"), mk_service(None, json!({"clusterIP": "None"})));
        assert_eq!(out["spec"]["clusterIP"], "None");
    }

    #[test]
    fn node_ports_match_by_port_and_protocol_then_by_name() {
        let desired = mk_service(
            Some("NodePort"),
            json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "http", "port": 8080}, {"port": 80}]}),
        );
        let out = preserve(&mk_live("NodePort"), desired);
        let ports = &out["spec"]["ports"];
        assert_eq!(ports[0]["nodePort"], 30053, "port+protocol");
        assert_eq!(ports[1]["nodePort"], 30080, "by name when the port changed");
        assert_eq!(ports[2]["nodePort"], 30080, "protocol defaults to TCP");
    }

    #[test]
    fn a_udp_port_does_not_take_the_tcp_node_port() {
        let desired = mk_service(Some("NodePort"), json!({"ports": [{"port": 80, "protocol": "UDP"}]}));
        let out = preserve(&mk_live("NodePort"), desired);
        assert_eq!(out["spec"]["ports"][0].get("nodePort"), None);
    }

    #[test]
    fn no_node_ports_or_health_check_for_a_cluster_ip_service() {
        let out = preserve(&mk_live("LoadBalancer"), mk_service(Some("ClusterIP"), json!({"ports": [{"port": 80}]})));
        assert_eq!(out["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(out["spec"].get("healthCheckNodePort"), None);
        let lb = preserve(&mk_live("LoadBalancer"), mk_service(Some("LoadBalancer"), json!({"ports": [{"port": 80}]})));
        assert_eq!(lb["spec"]["healthCheckNodePort"], 32000);
        assert_eq!(lb["spec"]["ports"][0]["nodePort"], 30080);
    }

    #[test]
    fn external_name_gets_no_cluster_ip() {
        let out =
            preserve(&mk_live("ClusterIP"), mk_service(Some("ExternalName"), json!({"externalName": "x.example"})));
        assert_eq!(out["spec"].get("clusterIP"), None);
    }

    #[test]
    fn ignore_paths_only_for_services() {
        assert_eq!(ServiceRule::ignore_paths("", "Service").len(), KEPT.len());
        assert!(ServiceRule::ignore_paths("", "Pod").is_empty());
    }
}
