//! Criterion benchmark of the pure sync core on a ~50 KB Deployment: the differ and the
//! built-in preservation, the two steps every update pays for.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use criterion::{Criterion, criterion_group, criterion_main};
use downsync::sync::differ::{DiffOptions, diff};
use downsync::sync::preservation::{PreserveOptions, preserve};
use serde_json::{Value, json};
use std::hint::black_box;

/// A Deployment with many containers, each with many env vars: about 50 KB of JSON.
fn mk_big_deployment(image_tag: &str) -> Value {
    let containers: Vec<Value> = (0..20)
        .map(|c| {
            let env: Vec<Value> = (0..40)
                .map(|e| json!({"name": format!("VAR_{c}_{e}"), "value": format!("value-{c}-{e}-padding-padding")}))
                .collect();
            json!({
                "name": format!("c{c}"),
                "image": format!("registry.example.com/app/c{c}:{image_tag}"),
                "ports": [{"containerPort": 8000 + c, "protocol": "TCP"}],
                "env": env,
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
            })
        })
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "big", "namespace": "bench", "labels": {"app": "big"}, "annotations": {"a": "b"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": containers}},
        },
    })
}

/// The live downstream copy: server metadata, defaults in every container, status.
fn mk_live(desired: &Value) -> Value {
    let mut live = desired.clone();
    live["metadata"]["uid"] = json!("0b3c1e8a-0000-0000-0000-000000000000");
    live["metadata"]["resourceVersion"] = json!("123456");
    live["metadata"]["generation"] = json!(4);
    live["metadata"]["labels"]["downstream-only"] = json!("yes");
    if let Some(cs) = live.pointer_mut("/spec/template/spec/containers").and_then(Value::as_array_mut) {
        for c in cs {
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["imagePullPolicy"] = json!("IfNotPresent");
        }
    }
    live["status"] = json!({"replicas": 3, "readyReplicas": 3, "observedGeneration": 4});
    live
}

fn bench(c: &mut Criterion) {
    let desired = mk_big_deployment("v1");
    let changed = mk_big_deployment("v2");
    let live = mk_live(&desired);
    eprintln!("desired object: {} bytes of JSON", desired.to_string().len());
    let opts = DiffOptions::default();
    let popts = PreserveOptions { preserve: vec!["/spec/replicas".into()] };

    c.bench_function("differ/50KB/unchanged", |b| b.iter(|| diff(black_box(&live), black_box(&desired), &opts)));
    c.bench_function("differ/50KB/20-images-changed", |b| {
        b.iter(|| diff(black_box(&live), black_box(&changed), &opts))
    });
    c.bench_function("preservation/50KB", |b| b.iter(|| preserve(black_box(&live), black_box(&changed), &popts)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
