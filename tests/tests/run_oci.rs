//! Plugins from OCI registries, against a real registry (CNCF Distribution with TLS from a test
//! CA and htpasswd auth), signatures made by the real cosign CLI, and the real apiservers: a
//! signed plugin is pulled and applied; new digests pushed to its tag are refused when unsigned
//! or signed by another key while the running version keeps working, and taken up through
//! shadow and promotion when signed; with the registry stopped, the running syncer and a
//! restarted one keep syncing from the cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use downsync_plugin_testing_stamp::{MARKER, variant};
use downsync_tests::bench::reload::patch_bytes;
use downsync_tests::daemon::{Daemon, cluster_args, run_to_end, run_to_end_with_env};
use downsync_tests::objects::all_stamped;
use downsync_tests::plugins::{guest_plugin_path, plugin_path};
use downsync_tests::registry::{Cosign, Registry};
use downsync_tests::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sha2::Digest;

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("downsync-oci-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The stamp component stamping `marker`.
fn stamp_file(dir: &Path, marker: &str, extra: &[u8]) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let base = std::fs::read(plugin_path("downsync-plugin-testing-stamp")?)?;
    let mut bytes = patch_bytes(&base, MARKER.as_bytes(), marker.as_bytes())?;
    if !extra.is_empty() {
        // A custom section: a new digest, the same behaviour.
        let name = b"downsync-test-rebuild";
        let mut payload = vec![u8::try_from(name.len())?];
        payload.extend_from_slice(name);
        payload.extend_from_slice(extra);
        bytes.push(0);
        bytes.push(u8::try_from(payload.len())?);
        bytes.extend(payload);
    }
    let path = dir.join(format!("stamp-{}.wasm", &sha256(&bytes)[..12]));
    std::fs::write(&path, &bytes)?;
    Ok((path, bytes))
}

fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `downsync plugin push FILE SOURCE`; returns the manifest digest it printed.
fn push(registry: &Registry, file: &Path, source: &str) -> anyhow::Result<String> {
    let mut args = vec!["plugin".to_string(), "push".into(), file.display().to_string(), source.into()];
    args.extend(registry.cli_args());
    let (status, out, err) = run_to_end(&os(&args))?;
    anyhow::ensure!(status.success(), "plugin push: {out}\n{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .map(|d| d.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("no digest in: {out}"))
}

async fn create_configmap(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}}))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await?;
    Ok(())
}

fn pull_failures(d: &Daemon, reason: &str) -> anyhow::Result<f64> {
    d.metric("downsync_plugin_pull_failures_total", &[r#"plugin="stamp""#, &format!(r#"reason="{reason}""#)])
}

/// The config of a syncer whose `stamp` plugin comes from `source`, trusting `key`; the
/// registry's CA and credentials are copied beside it, as a pod mounts them (the credentials as
/// `docker/config.json`, the `DOCKER_CONFIG` of [`start`]).
fn write_config(dir: &Path, registry: &Registry, source: &str, key: &Path) -> anyhow::Result<PathBuf> {
    let ca = dir.join("ca.crt");
    std::fs::copy(&registry.ca, &ca)?;
    std::fs::create_dir_all(dir.join("docker"))?;
    std::fs::copy(&registry.docker_config, dir.join("docker/config.json"))?;
    let yaml = format!(
        "plugins:\n  stamp:\n    source: {source}\n    keys: [{key}]\n    rollout: {{mode: shadow}}\n\
         registry:\n  caFile: {ca}\n  checkSeconds: 1\n",
        key = key.display(),
        ca = ca.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn start(name: &str, ns: &str, config: &Path, cache: &Path) -> anyhow::Result<Daemon> {
    // A trial window of 3 calls, one per ConfigMap.
    let args: Vec<String> =
        ["--resource", "v1/ConfigMap", "--namespace", ns, "--target", ns, "--trial-window-calls", "3", "--config"]
            .into_iter()
            .map(String::from)
            .chain([config.display().to_string()])
            .collect();
    let docker = config.parent().unwrap_or(Path::new(".")).join("docker");
    let pod = [
        ("POD_NAME", "downsync-oci-pod"),
        ("POD_NAMESPACE", ns),
        ("XDG_CACHE_HOME", &*cache.to_string_lossy()),
        ("DOCKER_CONFIG", &*docker.to_string_lossy()),
    ];
    Daemon::start_with_env(name, &cluster_args()?, &args, Some("info,downsync=debug"), &pod)
}

#[tokio::test]
async fn a_signed_plugin_from_a_registry_is_applied_and_only_signed_digests_replace_it_even_offline()
-> anyhow::Result<()> {
    let env = TestEnv::new("run-oci-signed").await?;
    let ns = env.namespace.clone();
    let work = scratch("signed")?;
    let mut registry = Registry::start("oci-signed")?;
    let cosign = Cosign::new(&work.join("keys"))?;
    let (trusted, _other) = (cosign.key_pair("trusted")?, cosign.key_pair("other")?);
    let repo = "rules/stamp";
    let source = registry.source(&format!("{repo}:live"));

    let (v1_file, v1) = stamp_file(&work, &variant(1), &[])?;
    let d1 = push(&registry, &v1_file, &source)?;
    cosign.sign(&registry, repo, &d1, "trusted")?;
    for i in 0..3 {
        create_configmap(&env.upstream, &ns, &format!("cm-{i}")).await?;
    }
    let config = write_config(&work, &registry, &source, &trusted)?;
    let cache = work.join("cache");
    let mut d = start("oci-signed", &ns, &config, &cache)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    let one = variant(1);
    eventually("v1 from the registry stamps every copy", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, 3, &one).await?.then_some(()))
    })
    .await?;
    let status = d.plugin_status("stamp")?;
    assert_eq!(status["digest"], sha256(&v1), "{status}");
    assert_eq!(status["source"]["source"], source.as_str(), "{status}");
    assert_eq!(status["source"]["digest"], d1.as_str(), "{status}");
    assert_eq!(status["source"]["signer"], trusted.display().to_string(), "{status}");
    assert!(status["source"]["lastCheckUnixSeconds"].as_u64().is_some(), "{status}");

    // An unsigned digest pushed to the tag is refused by name; v1 keeps working.
    let (v2_file, _) = stamp_file(&work, &variant(2), &[])?;
    let d2 = push(&registry, &v2_file, &source)?;
    let s = eventually("the unsigned digest to be refused", Duration::from_secs(30), || async {
        let s = d.plugin_status("stamp")?;
        let e = s["source"]["lastError"].as_str().unwrap_or_default().to_string();
        Ok((e.contains(&d2) && e.contains("no cosign signature")).then_some(s))
    })
    .await?;
    assert!(s["source"]["lastError"].as_str().is_some_and(|e| e.contains(&source)), "names the source: {s}");
    assert!(pull_failures(&d, "unsigned")? >= 1.0);
    assert_eq!(s["digest"], sha256(&v1), "{s}");

    // Signed by a key that is not trusted: refused by name.
    cosign.sign(&registry, repo, &d2, "other")?;
    let s = eventually("the wrongly signed digest to be refused", Duration::from_secs(30), || async {
        let s = d.plugin_status("stamp")?;
        let e = s["source"]["lastError"].as_str().unwrap_or_default().to_string();
        Ok(e.contains("none of the trusted keys").then_some(s))
    })
    .await?;
    assert!(pull_failures(&d, "bad_signature")? >= 1.0, "{s}");
    create_configmap(&env.upstream, &ns, "cm-3").await?;
    eventually("a new object stamped by v1 meanwhile", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, 4, &one).await?.then_some(()))
    })
    .await?;
    // An Event on the pod says why.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.downstream.clone(), &ns);
    let event = eventually("a PluginPullFailed Event", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            // Events of one reason on one pod are a series (kube's recorder): the first refusal's note.
            e.reason.as_deref() == Some("PluginPullFailed")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("plugin stamp") && n.contains(&source) && n.contains("keeping"))
        }))
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    // A signed new digest (the same behaviour, rebuilt) is taken up, shadowed and promoted.
    let (v1b_file, v1b) = stamp_file(&work, &variant(1), b"b")?;
    let d1b = push(&registry, &v1b_file, &source)?;
    cosign.sign(&registry, repo, &d1b, "trusted")?;
    let s = eventually("the signed rebuild to be promoted", Duration::from_secs(60), || async {
        let s = d.plugin_status("stamp")?;
        Ok((s["digest"] == sha256(&v1b) && s["rollout"]["shadow"].is_null()).then_some(s))
    })
    .await?;
    assert_eq!(s["source"]["digest"], d1b.as_str(), "{s}");
    assert!(s["source"]["lastError"].is_null(), "{s}");
    assert_eq!(d.metric("downsync_plugin_promotions_total", &[r#"plugin="stamp""#])?, 1.0);
    assert!(d.log_text().contains("new plugin version runs in shadow"), "it went through shadow");

    // The registry goes away: the running version keeps syncing, the failure is counted.
    registry.stop()?;
    create_configmap(&env.upstream, &ns, "cm-4").await?;
    eventually("a new object stamped with the registry down", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, 5, &one).await?.then_some(()))
    })
    .await?;
    eventually("the outage to be counted", Duration::from_secs(30), || async {
        Ok((pull_failures(&d, "unreachable")? >= 1.0).then_some(()))
    })
    .await?;
    let s = d.plugin_status("stamp")?;
    assert_eq!(s["digest"], sha256(&v1b), "{s}");

    // A restart with the registry still down runs the last verified version from the cache.
    d.terminate()?;
    let mut d = start("oci-signed-restart", &ns, &config, &cache)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    let s = d.plugin_status("stamp")?;
    assert_eq!((s["digest"].clone(), s["source"]["fromCache"].clone()), (json!(sha256(&v1b)), json!(true)), "{s}");
    assert!(s["source"]["lastError"].as_str().is_some_and(|e| e.contains(&source)), "{s}");
    create_configmap(&env.upstream, &ns, "cm-5").await?;
    eventually("a new object stamped after the offline restart", Duration::from_secs(30), || async {
        Ok(all_stamped(&env.downstream, &ns, 6, &one).await?.then_some(()))
    })
    .await?;
    d.terminate()?;
    let _ = std::fs::remove_dir_all(&work);
    env.cleanup().await
}

/// `downsync plugin pull` with a key, for the bad cases: each refused with a message naming the
/// source and the reason.
fn pull(source: &str, key: Option<&Path>, extra: &[&str]) -> anyhow::Result<(bool, String)> {
    let out_file = std::env::temp_dir().join(format!("downsync-oci-pulled-{}.wasm", std::process::id()));
    let mut args =
        vec!["plugin".to_string(), "pull".into(), source.into(), "--out".into(), out_file.display().to_string()];
    if let Some(k) = key {
        args.extend(["--key".to_string(), k.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let (status, out, err) = run_to_end(&os(&args))?;
    Ok((status.success(), format!("{out}{err}")))
}

/// Pushes `layer` with `config_media_type` and `layer_media_type` as raw OCI artifact (what
/// other tools push), returning the manifest digest.
async fn push_raw(
    registry: &Registry,
    source: &str,
    config_media_type: &str,
    layer_media_type: &str,
    layer: Vec<u8>,
) -> anyhow::Result<String> {
    use oci_client::client::{Config, ImageLayer};
    let settings = downsync::plugin::oci::RegistrySettings {
        credentials: Some(registry.docker_config.clone()),
        ca_file: Some(registry.ca.clone()),
        ..Default::default()
    };
    let client = settings.client()?;
    let auth = oci_client::secrets::RegistryAuth::Basic(registry.user.clone(), registry.password.clone());
    let reference: oci_client::Reference = source.trim_start_matches("oci://").parse()?;
    let layers = [ImageLayer::new(layer, layer_media_type.to_string(), None)];
    let config = Config::new(b"{}".to_vec(), config_media_type.to_string(), None);
    client.push(&reference, &layers, config, &auth, None).await?;
    Ok(client.fetch_manifest_digest(&reference, &auth).await?)
}

#[tokio::test]
async fn plugin_push_and_pull_verify_and_every_bad_artifact_is_refused_by_name() -> anyhow::Result<()> {
    let work = scratch("cli")?;
    let mut registry = Registry::start("oci-cli")?;
    let cosign = Cosign::new(&work.join("keys"))?;
    let (trusted, other) = (cosign.key_pair("trusted")?, cosign.key_pair("other")?);
    let creds = registry.cli_args();
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();

    // Pushed (after the checks of `plugin check`), signed, pulled and verified.
    let (file, bytes) = stamp_file(&work, &variant(7), &[])?;
    let source = registry.source("rules/stamp:v7");
    let digest = push(&registry, &file, &source)?;
    cosign.sign(&registry, "rules/stamp", &digest, "trusted")?;
    let (ok, text) = pull(&source, Some(&trusted), &creds)?;
    assert!(ok && text.contains(&trusted.display().to_string()) && text.contains(&digest), "{text}");
    let out_file = std::env::temp_dir().join(format!("downsync-oci-pulled-{}.wasm", std::process::id()));
    assert_eq!(sha256(&std::fs::read(&out_file)?), sha256(&bytes), "the pulled component is the pushed one");
    // By digest too.
    let pinned = registry.source(&format!("rules/stamp@{digest}"));
    assert!(pull(&pinned, Some(&trusted), &creds)?.0);

    // Not a component: push refuses before anything is sent.
    let junk = work.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0")?;
    let mut args =
        vec!["plugin".to_string(), "push".into(), junk.display().to_string(), registry.source("rules/junk:v1")];
    args.extend(registry.cli_args());
    let (status, out, err) = run_to_end(&os(&args))?;
    assert!(!status.success() && format!("{out}{err}").contains("junk.wasm"), "{out}{err}");

    let refused = |what: &str, text: &str, source: &str, says: &[&str]| {
        assert!(text.contains(source), "{what}: names the source: {text}");
        for s in says {
            assert!(text.contains(s), "{what}: says {s:?}: {text}");
        }
    };
    // Signed by another key; unsigned; unsigned but not asked to verify.
    let (ok, text) = pull(&source, Some(&other), &creds)?;
    assert!(!ok);
    refused("another key", &text, &source, &["none of the trusted keys", &other.display().to_string()]);
    let (file8, _) = stamp_file(&work, &variant(8), &[])?;
    let unsigned = registry.source("rules/stamp:unsigned");
    push(&registry, &file8, &unsigned)?;
    let (ok, text) = pull(&unsigned, Some(&trusted), &creds)?;
    assert!(!ok);
    refused("unsigned", &text, &unsigned, &["no cosign signature"]);
    let mut no_verify = creds.clone();
    no_verify.push("--no-verify");
    assert!(pull(&unsigned, None, &no_verify)?.0, "--no-verify takes it");
    let (ok, text) = pull(&unsigned, None, &creds)?;
    assert!(!ok && text.contains("--key"), "verification is the default: {text}");

    // Another layout (the older wasm-to-oci media types, an image), too big, tampered.
    let old = registry.source("rules/old:v1");
    push_raw(
        &registry,
        &old,
        "application/vnd.wasm.config.v1+json",
        "application/vnd.wasm.content.layer.v1+wasm",
        bytes.clone(),
    )
    .await?;
    let (ok, text) = pull(&old, None, &no_verify)?;
    assert!(!ok);
    refused("old layout", &text, &old, &["application/vnd.wasm.config.v1+json", "application/vnd.wasm.config.v0+json"]);
    let big = registry.source("rules/big:v1");
    push_raw(&registry, &big, "application/vnd.wasm.config.v0+json", "application/wasm", vec![0; (64 << 20) + 1])
        .await?;
    let (ok, text) = pull(&big, None, &no_verify)?;
    assert!(!ok);
    refused("too big", &text, &big, &["67108865 bytes", "not downloaded"]);
    let tampered = registry.source("rules/tampered:v1");
    push_raw(&registry, &tampered, "application/vnd.wasm.config.v0+json", "application/wasm", bytes.clone()).await?;
    let blob = registry
        .dir
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&sha256(&bytes)[..2])
        .join(sha256(&bytes))
        .join("data");
    let mut stored = std::fs::read(&blob)?;
    let last = stored.len() - 1;
    stored[last] ^= 0xff;
    std::fs::write(&blob, &stored)?;
    let (ok, text) = pull(&tampered, None, &no_verify)?;
    assert!(!ok);
    assert!(text.contains(&tampered) && (text.contains("does not hash") || text.contains("igest")), "tampered: {text}");

    // Unauthorised (a wrong password), a plain-HTTP attempt at a TLS registry, unreachable.
    let wrong = work.join("wrong.json");
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:not-the-password", registry.user).as_bytes());
    std::fs::write(&wrong, format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.addr))?;
    let wrong_creds = ["--credentials", &wrong.display().to_string(), "--ca-file", &registry.ca.display().to_string()]
        .map(String::from);
    let wrong_creds: Vec<&str> = wrong_creds.iter().map(String::as_str).collect();
    let (ok, text) = pull(&source, Some(&trusted), &wrong_creds)?;
    assert!(!ok);
    refused("unauthorised", &text, &source, &["Not authorized"]);
    let (ok, text) = pull(&source, Some(&trusted), &["--credentials", &registry.docker_config.display().to_string()])?;
    assert!(!ok, "the test CA is not trusted without --ca-file: {text}");
    // Plain HTTP only for a registry named as insecure.
    let plain = Registry::start_insecure("oci-cli-http")?;
    let http_source = plain.source("rules/stamp:v7");
    let mut args = vec!["plugin".to_string(), "push".into(), file.display().to_string(), http_source.clone()];
    args.push("--insecure".into());
    let (status, out, err) = run_to_end(&os(&args))?;
    assert!(status.success(), "push over plain HTTP with --insecure: {out}{err}");
    let (ok, text) = pull(&http_source, None, &["--no-verify"])?;
    assert!(!ok && text.contains(&http_source), "plain HTTP is not used unless named: {text}");
    assert!(pull(&http_source, None, &["--no-verify", "--insecure"])?.0, "named as insecure");
    drop(plain);

    // Stopped (its CA and credentials go with it; kept aside first).
    let (ca, config) = (work.join("ca.crt"), work.join("config.json"));
    std::fs::copy(&registry.ca, &ca)?;
    std::fs::copy(&registry.docker_config, &config)?;
    registry.stop()?;
    let kept =
        ["--credentials", &config.display().to_string(), "--ca-file", &ca.display().to_string()].map(String::from);
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    let (ok, text) = pull(&source, Some(&trusted), &kept)?;
    assert!(!ok);
    refused("unreachable", &text, &source, &["error sending request"]);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A 19 MB Python component shipped through the registry, signed, applied by `run --once`.
#[tokio::test]
async fn a_signed_python_component_from_a_registry_keeps_the_downstream_replicas() -> anyhow::Result<()> {
    let python = guest_plugin_path("python_hpa_replicas")?;
    let size = std::fs::metadata(&python)?.len();
    assert!(size > 10 << 20, "the Python component is {size} bytes");
    let env = TestEnv::new("run-oci-python").await?;
    let ns = env.namespace.clone();
    let work = scratch("python")?;
    let registry = Registry::start("oci-python")?;
    let cosign = Cosign::new(&work.join("keys"))?;
    let key = cosign.key_pair("team")?;
    let source = registry.source("rules/hpa-replicas:1.0");
    let digest = push(&registry, &python, &source)?;
    cosign.sign(&registry, "rules/hpa-replicas", &digest, "team")?;
    let config = work.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "plugins:\n  hpa-replicas:\n    source: {source}\n    keys: [{}]\nregistry:\n  caFile: {}\n",
            key.display(),
            registry.ca.display()
        ),
    )?;
    let up: Api<Deployment> = Api::namespaced(env.upstream.clone(), &ns);
    let down: Api<Deployment> = Api::namespaced(env.downstream.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}))?;
    up.create(&PostParams::default(), &deployment).await?;
    let sync_once = || -> anyhow::Result<String> {
        let mut args = vec![OsString::from("run"), "--once".into()];
        args.extend(cluster_args()?);
        args.extend(os(
            &["--resource", "apps/v1/Deployment", "--namespace", &ns, "--target", &ns, "--config"].map(String::from)
        ));
        args.push(config.clone().into_os_string());
        let docker = registry.docker_config_dir.to_string_lossy();
        let (status, out, err) = run_to_end_with_env(&args, &[("DOCKER_CONFIG", &*docker)])?;
        anyhow::ensure!(status.success(), "run --once: {out}\n{err}");
        Ok(err)
    };
    sync_once()?;
    down.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 7}}))).await?;
    up.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}}),
        ),
    )
    .await?;
    let log = sync_once()?;
    assert!(log.contains("pulled a new plugin version") && log.contains(&digest), "{log}");
    let d = serde_json::to_value(down.get("web").await?)?;
    assert_eq!(d.pointer("/spec/replicas"), Some(&json!(7)), "the Python rule kept the live replicas");
    assert_eq!(d.pointer("/spec/template/spec/containers/0/image"), Some(&json!("nginx:1.28")));
    let _ = std::fs::remove_dir_all(&work);
    env.cleanup().await
}
