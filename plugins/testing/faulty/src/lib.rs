//! Test component that misbehaves on demand, chosen by the desired object's `downsync.dev/fault` annotation.
//!
//! Faults: `trap` (panics), `loop` (never returns), `memory` (allocates without end),
//! `bad-json` (returns text that is not JSON), `rename` (changes metadata.name),
//! `outside` (writes `/spec/outside`, beyond its scope), `print` (writes to stdout and stderr,
//! then stamps as usual), `udp` (binds a UDP socket and sends a datagram; returns what came of
//! it as an error), `big-error` (a 40 MB error string), `big-output` (a 5 MiB label value),
//! `log-flood` (10 000 host log lines), `log-forge` (a log line with a forged second line),
//! `sleep` (sleeps 10 ms, then stamps as usual).
//! Without the annotation it stamps the label `faulty: ok` (its scope), so the host's happy
//! path is exercised too. `ignore-paths` answers kind `ManyPaths` with 100 000 paths and kind
//! `LongPath` with one 1 MiB path.
//! It implements the WIT exports by hand, because the SDK would never emit invalid JSON.

use downsync_plugin_sdk::{Value, json, pointer};

/// The annotation that picks the fault.
pub const FAULT: &str = "/metadata/annotations/downsync.dev~1fault";

/// What the plugin does to a desired object: Ok(text to return) or Err(message).
pub fn misbehave(desired: &str) -> Result<String, String> {
    let mut obj: Value = serde_json::from_str(desired).map_err(|e| e.to_string())?;
    let fault = pointer::get(&obj, FAULT).and_then(Value::as_str).unwrap_or("").to_string();
    match fault.as_str() {
        "trap" => panic!("faulty plugin asked to trap"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        "bad-json" => Ok("{not json".to_string()),
        "rename" => {
            pointer::set(&mut obj, "/metadata/name", json!("renamed"));
            Ok(obj.to_string())
        }
        "print" => {
            println!("faulty plugin writes to stdout\nsecond line");
            eprintln!("faulty plugin writes to stderr");
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
        "udp" => Err(udp()),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(10));
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
        "big-error" => Err("e".repeat(40 << 20)),
        "big-output" => {
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("x".repeat(5 << 20)));
            Ok(obj.to_string())
        }
        "log-flood" => {
            for i in 0..10_000 {
                log(&format!("flood line {i}"));
            }
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
        "log-forge" => {
            log("innocent\n2026-01-01T00:00:00.000000Z ERROR downsync: forged host line\u{1b}[31m");
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
        "outside" => {
            pointer::set(&mut obj, "/spec/outside", json!(true));
            Ok(obj.to_string())
        }
        _ => {
            pointer::set(&mut obj, "/metadata/labels/faulty", json!("ok"));
            Ok(obj.to_string())
        }
    }
}

/// Binds a UDP socket and sends one datagram; says how far it got.
fn udp() -> String {
    match std::net::UdpSocket::bind("0.0.0.0:0") {
        Err(e) => format!("udp bind failed: {e}"),
        Ok(socket) => match socket.send_to(b"ping", "10.255.255.1:53") {
            Err(e) => format!("udp send failed: {e}"),
            Ok(n) => format!("udp sent {n} bytes"),
        },
    }
}

/// Logs through the host at info level (a no-op natively, where there is no host).
fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    downsync_plugin_sdk::log::info(message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

/// What `ignore-paths` answers for a kind: floods for `ManyPaths` and `LongPath`.
pub fn ignore_paths(kind: &str) -> Vec<String> {
    match kind {
        "ManyPaths" => (0..100_000).map(|i| format!("/spec/p{i}")).collect(),
        "LongPath" => vec![format!("/spec/{}", "p".repeat(1 << 20))],
        _ => Vec::new(),
    }
}

#[cfg(target_arch = "wasm32")]
mod export {
    use downsync_plugin_sdk::bindings::downsync::rules::types::{Decision, Hooks, Intent, KindPattern, PluginInfo};
    use downsync_plugin_sdk::bindings::exports::downsync::rules::rules::Guest;

    struct Faulty;

    impl Guest for Faulty {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: "faulty".into(),
                version: "0.1.0".into(),
                kinds: vec![KindPattern { group: "".into(), kind: "ConfigMap".into() }],
                scope: vec!["/metadata/labels/faulty".into()],
                hooks: Hooks::all(),
                reads: Vec::new(),
            }
        }
        fn transform(desired: String, _intent: Intent) -> Result<String, String> {
            super::misbehave(&desired)
        }
        fn preserve(_existing: String, desired: String, _intent: Intent) -> Result<Decision, String> {
            super::misbehave(&desired).map(Decision::Apply)
        }
        fn ignore_paths(_group: String, kind: String) -> Vec<String> {
            super::ignore_paths(&kind)
        }
    }

    downsync_plugin_sdk::bindings::export_rule_world!(Faulty with_types_in downsync_plugin_sdk::bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_configmap(fault: &str) -> String {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"downsync.dev/fault": fault}}})
            .to_string()
    }

    #[test]
    fn output_faults_produce_what_they_say() {
        assert!(serde_json::from_str::<Value>(&misbehave(&mk_configmap("bad-json")).unwrap()).is_err());
        let renamed: Value = serde_json::from_str(&misbehave(&mk_configmap("rename")).unwrap()).unwrap();
        assert_eq!(renamed["metadata"]["name"], "renamed");
        let ok: Value = serde_json::from_str(&misbehave(&mk_configmap("")).unwrap()).unwrap();
        assert_eq!(ok["metadata"]["labels"]["faulty"], "ok");
    }
}
