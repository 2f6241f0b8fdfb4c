//! Plugins in other languages and the instance policy: the Python (componentize-py) and
//! JavaScript (jco, QuickJS) hpa-replicas examples pass `plugin check` and `plugin test` and
//! keep downstream replicas against the real apiserver; a plugin that declares itself stateless
//! runs in reused instances, any other in a fresh instance per call, which keeps state from
//! leaking between objects; `plugin new` skeletons pass `plugin test` as generated, in every
//! language.
//!
//! The guest toolchains and the example components come from tests/guest-toolchains.sh
//! (tests/run.sh runs it; otherwise these tests run it themselves).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use downsync::plugin::RegistryConfig;
use downsync::plugin::{EngineConfig, InstancePolicy, Metrics, Plugin, PluginEngine, PluginRegistry, PluginSet};
use downsync::sync::Intent;
use downsync_tests::daemon::{cluster_args, run_to_end, run_to_end_with_env};
use downsync_tests::plugins::{guest_plugin_path, guest_tools, plugin_path};
use downsync_tests::{TestEnv, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("downsync-lang-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `downsync plugin check FILE` and `downsync plugin test FILE FIXTURES`, both passing.
fn check_and_test(wasm: &Path, fixtures: &Path) -> anyhow::Result<String> {
    let (status, out, err) = run_to_end(&[OsString::from("plugin"), "check".into(), wasm.into()])?;
    anyhow::ensure!(status.success(), "plugin check {}: {out}{err}", wasm.display());
    let (status, tested, err) = run_to_end(&[OsString::from("plugin"), "test".into(), wasm.into(), fixtures.into()])?;
    anyhow::ensure!(status.success(), "plugin test {}: {tested}{err}", wasm.display());
    Ok(format!("{out}{tested}"))
}

#[test]
fn the_python_and_js_examples_pass_plugin_check_and_their_fixtures() -> anyhow::Result<()> {
    let root = repo_root();
    for (name, dir) in [("python_hpa_replicas", "python-hpa-replicas"), ("js_hpa_replicas", "js-hpa-replicas")] {
        let wasm = guest_plugin_path(name)?;
        let out = check_and_test(&wasm, &root.join("examples/plugins").join(dir).join("fixtures"))?;
        assert!(out.contains("name:    hpa-replicas"), "{name}: {out}");
        assert!(out.contains("version: 0.2.0+stateless") && out.contains("stateless: yes"), "{name}: {out}");
        assert!(out.contains("Deployment: /spec/replicas"), "{name}: ignore-paths: {out}");
        assert!(out.contains("2 passed, 0 failed"), "{name}: {out}");
    }
    Ok(())
}

/// A plugin runs in the instances it declares. The counter claims to be stateless (it is not,
/// on purpose): one kept instance serves every call and its count climbs. In fresh instances,
/// which every plugin that does not declare itself stateless gets, each object reads `1`.
#[test]
fn a_plugin_runs_in_the_instances_it_declares_and_fresh_ones_leak_nothing() -> anyhow::Result<()> {
    let engine = PluginEngine::new(EngineConfig { cache_dir: None, ..EngineConfig::default() })?;
    let counter = Plugin::load_file(&engine, &plugin_path("downsync-plugin-testing-counter")?)?;
    assert!(counter.info().declares_stateless());
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "n", "annotations": {}}});
    let stamp = |out: &serde_json::Value| {
        out["metadata"]["annotations"]["test.downsync.dev/calls"].as_str().unwrap_or("?").to_string()
    };
    let registry =
        PluginRegistry::new(PluginSet::new(vec![counter.clone()], &RegistryConfig::default())?, Metrics::default());
    let counts = (0..4)
        .map(|i| registry.transform(cm(&format!("cm-{i}"))).map(|out| stamp(&out)).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    assert_eq!(counts, ["1", "2", "3", "4"], "declared stateless: one kept instance serves every call");

    // After a failed call (here the plugin's own error) the kept instance is dropped: the next
    // call starts from a new one.
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad", "namespace": "n", "annotations": "x"}});
    assert!(registry.transform(bad).is_err(), "annotations that are not an object are refused");
    assert_eq!(stamp(&registry.transform(cm("c")).map_err(|e| anyhow::anyhow!("{e}"))?), "1", "a new instance");

    // In fresh instances nothing one object leaves behind reaches the next.
    let fresh = counter.with_instances(InstancePolicy::Fresh);
    for i in 0..4 {
        let out = fresh.transform(&cm(&format!("f-{i}")), &Intent::Unknown)?;
        assert_eq!(stamp(&out.value), "1", "every object gets a fresh instance");
    }

    // A plugin that does not declare itself stateless gets fresh instances, whatever is asked.
    let minimal = Plugin::load_file(&engine, &plugin_path("downsync-plugin-minimal")?)?;
    assert!(!minimal.info().declares_stateless());
    assert_eq!(minimal.with_declared_instances().instances(), InstancePolicy::Fresh);
    assert_eq!(minimal.with_instances(InstancePolicy::Reused).instances(), InstancePolicy::Fresh);
    assert_eq!(counter.with_declared_instances().instances(), InstancePolicy::Reused);
    Ok(())
}

async fn replicas(api: &Api<Deployment>, name: &str) -> anyhow::Result<(Option<i64>, String)> {
    let d = serde_json::to_value(api.get(name).await?)?;
    let image = d.pointer("/spec/template/spec/containers/0/image").and_then(|v| v.as_str()).unwrap_or_default();
    Ok((d.pointer("/spec/replicas").and_then(serde_json::Value::as_i64), image.to_string()))
}

/// `downsync run --once` over the test namespace's Deployments with one plugin in the folder.
fn sync_once(ns: &str, plugin: &Path) -> anyhow::Result<()> {
    let dir = scratch(&format!("sync-{}", plugin.file_stem().and_then(|s| s.to_str()).unwrap_or("p")));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(plugin, dir.join("hpa-replicas.wasm"))?;
    let mut args = vec![OsString::from("run"), "--once".into()];
    args.extend(cluster_args()?);
    args.extend(os(&["--resource", "apps/v1/Deployment", "--namespace", ns, "--target", ns, "--plugins-dir"]));
    args.push(dir.clone().into_os_string());
    let (status, out, err) = run_to_end(&args)?;
    anyhow::ensure!(status.success(), "run --once with {}: {out}\n{err}", plugin.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn the_python_and_js_rules_keep_the_downstream_replicas_against_the_apiserver() -> anyhow::Result<()> {
    let (python, js) = (guest_plugin_path("python_hpa_replicas")?, guest_plugin_path("js_hpa_replicas")?);
    let env = TestEnv::new("plugin-languages").await?;
    let ns = env.namespace.clone();
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    let down: Api<Deployment> = Api::namespaced(env.downstream.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}))?;
    up.create(&PostParams::default(), &deployment).await?;

    // Created downstream with the desired replicas (Python; both examples declare themselves
    // stateless, so they run in reused instances).
    sync_once(&ns, &python)?;
    assert_eq!(replicas(&down, "web").await?, (Some(2), "nginx:1.27".into()));

    // An autoscaler scales downstream; upstream changes the image. The JS rule keeps the
    // downstream replicas and lets the image through.
    let scale = |n: i32| Patch::Merge(json!({"spec": {"replicas": n}}));
    let image =
        |i: &str| Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": i}]}}}}));
    down.patch("web", &PatchParams::default(), &scale(7)).await?;
    up.patch("web", &PatchParams::default(), &image("nginx:1.28")).await?;
    sync_once(&ns, &js)?;
    assert_eq!(replicas(&down, "web").await?, (Some(7), "nginx:1.28".into()), "JS: live replicas kept");

    // And once more with Python.
    down.patch("web", &PatchParams::default(), &scale(5)).await?;
    up.patch("web", &PatchParams::default(), &image("nginx:1.29")).await?;
    sync_once(&ns, &python)?;
    assert_eq!(replicas(&down, "web").await?, (Some(5), "nginx:1.29".into()), "Python: live replicas kept");
    env.cleanup().await
}

/// `downsync plugin new NAME --lang LANG`, built as its README says, passes `plugin test`.
fn new_plugin_passes_its_fixtures(lang: &str) -> anyhow::Result<()> {
    // A fixed folder: componentize-py's output depends on the source path, and the same bytes
    // each run find their compiled code in the artifact cache instead of compiling 18 MB again.
    let base = std::env::var_os("CARGO_TARGET_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join("downsync-plugin-new").join(lang);
    let _ = std::fs::remove_dir_all(&dir);
    let name = format!("keep-{lang}");
    let mut args = os(&["plugin", "new", &name, "--lang", lang, "--dir"]);
    args.push(dir.clone().into());
    let sdk = repo_root().join("plugins/sdk");
    if lang == "rust" {
        args.extend([OsString::from("--sdk"), sdk.into_os_string()]);
    }
    let (status, out, err) = run_to_end(&args)?;
    anyhow::ensure!(status.success(), "plugin new: {out}{err}");
    let krate = name.replace('-', "_");
    let wasm = match lang {
        "rust" => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // Under `tests/run.sh --coverage` cargo-llvm-cov's rustc wrapper would instrument the
            // SDK for wasm32, which has no profiler runtime: the guest is built as a user builds it.
            let status = Command::new(cargo)
                .current_dir(&dir)
                .args(["build", "--quiet", "--target", "wasm32-wasip2", "--profile", "plugin"])
                .env_remove("RUSTC_WRAPPER")
                .status()?;
            anyhow::ensure!(status.success(), "cargo build of the Rust skeleton failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
            target.join("wasm32-wasip2/plugin").join(format!("{krate}.wasm"))
        }
        _ => {
            let tools = guest_tools()?;
            let wasm = dir.join(format!("{krate}.wasm"));
            // componentize-py's output differs from build to build (and so would need a new
            // 18 MB compile each run): the component is cached by the skeleton's contents and
            // the tools, like the examples in tests/guest-toolchains.sh.
            let key = skeleton_key(&dir, &[&tools.componentize_py, &tools.jco])?;
            let cached = guest_cache().join(format!("plugin-new-{lang}-{key:016x}.wasm"));
            if cached.is_file() {
                std::fs::copy(&cached, &wasm)?;
            } else {
                let out = Command::new("bash")
                    .arg(dir.join("build.sh"))
                    .env("COMPONENTIZE_PY", &tools.componentize_py)
                    .env("JCO", &tools.jco)
                    .env("ROLLDOWN", &tools.rolldown)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "build.sh of the {lang} skeleton failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::create_dir_all(guest_cache())?;
                std::fs::copy(&wasm, &cached)?;
            }
            wasm
        }
    };
    let out = check_and_test(&wasm, &dir.join("fixtures"))?;
    assert!(out.contains(&format!("name:    {name}")) && out.contains("2 passed, 0 failed"), "{lang}: {out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Where tests/guest-toolchains.sh caches components.
fn guest_cache() -> PathBuf {
    let base = std::env::var_os("DOWNSYNC_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        home.join("downsync")
    });
    base.join("guest-components")
}

/// A hash of every file of a skeleton (path and contents) and of the tool paths (which name
/// their versions).
fn skeleton_key(dir: &Path, tools: &[&Path]) -> anyhow::Result<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() { files(&path, out)? } else { out.push(path) }
        }
        Ok(())
    }
    let mut all = Vec::new();
    files(dir, &mut all)?;
    all.sort();
    let mut h = DefaultHasher::new();
    for f in all {
        f.strip_prefix(dir)?.hash(&mut h);
        std::fs::read(&f)?.hash(&mut h);
    }
    tools.hash(&mut h);
    Ok(h.finish())
}

#[test]
fn a_new_rust_plugin_passes_plugin_test_as_generated() -> anyhow::Result<()> {
    new_plugin_passes_its_fixtures("rust")
}

#[test]
fn a_new_python_plugin_passes_plugin_test_as_generated() -> anyhow::Result<()> {
    new_plugin_passes_its_fixtures("python")
}

#[test]
fn a_new_js_plugin_passes_plugin_test_as_generated() -> anyhow::Result<()> {
    new_plugin_passes_its_fixtures("js")
}

#[test]
fn plugin_new_refuses_a_bad_name_and_an_occupied_folder() -> anyhow::Result<()> {
    let dir = scratch("new-refused");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("keep.txt"), "mine")?;
    let mut args = os(&["plugin", "new", "fine", "--lang", "python", "--dir"]);
    args.push(dir.clone().into());
    let (status, _, err) = run_to_end_with_env(&args, &[])?;
    assert!(!status.success() && err.contains("is not empty"), "{err}");
    let (status, _, err) = run_to_end(&os(&["plugin", "new", "Bad_Name", "--lang", "js"]))?;
    assert!(!status.success() && err.contains("must be 1-63 lowercase"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// examples/deploy-image-volume: the plugins folder comes from an OCI image (an image volume),
/// which a real API server accepts and keeps (a server without image volumes would drop the
/// field), next to the compiled-plugin cache the base mounts.
#[tokio::test]
async fn the_image_volume_overlay_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let dir = repo_root().join("examples/deploy-image-volume");
    let out = Command::new("kubectl").arg("kustomize").arg(&dir).output()?;
    anyhow::ensure!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let mut deployment = serde_yaml_ng::Deserializer::from_str(&text)
        .map(serde_json::Value::deserialize)
        .filter_map(Result::ok)
        .find(|d| d["kind"] == "Deployment")
        .ok_or_else(|| anyhow::anyhow!("no Deployment rendered"))?;
    let volume = |d: &serde_json::Value, name: &str| {
        d.pointer("/spec/template/spec/volumes")
            .and_then(serde_json::Value::as_array)
            .and_then(|v| v.iter().find(|v| v["name"] == name).cloned())
            .unwrap_or_default()
    };
    let plugins = volume(&deployment, "plugins");
    assert!(plugins.get("configMap").is_none(), "{plugins}");
    assert_eq!(plugins["image"]["reference"], "registry.example.com/downsync-plugins:1.0.0", "{plugins}");
    assert!(volume(&deployment, "cache").get("emptyDir").is_some(), "the base's cache volume is kept");

    let env = TestEnv::new("image-volume").await?;
    deployment["metadata"]["namespace"] = json!(env.namespace);
    let typed: Deployment = serde_json::from_value(deployment)?;
    let api: Api<Deployment> = Api::namespaced(env.downstream.clone(), &env.namespace);
    let created = api.create(&PostParams { dry_run: true, ..PostParams::default() }, &typed).await?;
    let kept = volume(&serde_json::to_value(&created)?, "plugins");
    assert_eq!(kept["image"]["reference"], "registry.example.com/downsync-plugins:1.0.0", "kept by the server: {kept}");
    env.cleanup().await
}
