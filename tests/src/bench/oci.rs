//! Section 14, plugins from an OCI registry (issue 30): the time from a signed push to the tag until
//! the new version is active in a running syncer, and what verification adds to a pull.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use downsync::plugin::oci::{Pull, RegistrySettings, Source, TrustedKey, VerifyPolicy};
use downsync_plugin_testing_stamp::{MARKER, variant};
use sha2::Digest;

use super::report::Section;
use super::timing::secs;
use super::{Bench, mib};
use crate::registry::{Cosign, Registry};

/// The tag check interval of the syncer measured.
const INTERVAL: u64 = 5;

/// Pull timings of one component.
#[derive(Debug, Default)]
pub struct Pulls {
    /// What it is.
    pub label: String,
    /// Its size.
    pub bytes: u64,
    /// Pulls without verification.
    pub off: Vec<Duration>,
    /// Pulls with the signature fetched and verified.
    pub verified: Vec<Duration>,
}

/// What the section measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// Push (signed, tag moved) to active, per new version.
    pub activations: Vec<Duration>,
    /// Pull costs per component.
    pub pulls: Vec<Pulls>,
    /// What went wrong.
    pub errors: Vec<String>,
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Pushes `file` to `tag` with `downsync plugin push`; returns the digest.
fn push(b: &Bench, registry: &Registry, file: &Path, tag: &str) -> Result<String> {
    let out = Command::new(&b.downsync)
        .args(["plugin", "push"])
        .arg(file)
        .arg(registry.source(tag))
        .args(registry.cli_args())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "plugin push: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.lines().find_map(|l| l.strip_prefix("digest: ")).map(|d| d.trim().to_string()).context("no digest printed")
}

/// Publishes `file` the careful way: pushed to a staging tag, signed by digest, then the live
/// tag moved to it (so the syncer never sees it unsigned). Returns when the live tag moved.
fn publish(b: &Bench, registry: &Registry, cosign: &Cosign, file: &Path) -> Result<()> {
    let digest = push(b, registry, file, "rules/stamp:staging")?;
    cosign.sign(registry, "rules/stamp", &digest, "bench")?;
    let moved = push(b, registry, file, "rules/stamp:live")?;
    anyhow::ensure!(moved == digest, "the live tag got {moved}, not {digest}");
    Ok(())
}

async fn active_digest(d: &super::process::Downsync) -> Result<String> {
    let (_, body) = super::http::get(d.addr, "/plugins", Duration::from_secs(5)).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["digest"].as_str().unwrap_or_default().to_string())
}

async fn activations(
    b: &Bench,
    registry: &Registry,
    cosign: &Cosign,
    key: &Path,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let base = std::fs::read(b.plugins.join("downsync_plugin_testing_stamp.wasm"))?;
    let version = |n: u64| -> Result<(std::path::PathBuf, String)> {
        let bytes = super::reload::patch_bytes(&base, MARKER.as_bytes(), variant(n).as_bytes())?;
        let path = b.work.join(format!("oci-stamp-{n}.wasm"));
        std::fs::write(&path, &bytes)?;
        Ok((path, sha256(&bytes)))
    };
    publish(b, registry, cosign, &version(1)?.0)?;
    let config = b.work.join("oci-config.yaml");
    std::fs::write(
        &config,
        format!(
            "plugins:\n  stamp:\n    source: {}\n    keys: [{}]\nregistry:\n  caFile: {}\n  checkSeconds: {INTERVAL}\n",
            registry.source("rules/stamp:live"),
            key.display(),
            registry.ca.display()
        ),
    )?;
    let ns = format!("bench-oci-{}", super::run_id());
    let mut args = super::sync::run_args(b, &[super::objects::Kind::ConfigMap], std::slice::from_ref(&ns), None);
    args.extend(["--target".into(), ns.clone(), "--config".into(), config.display().to_string()]);
    let docker = [("DOCKER_CONFIG".to_string(), registry.docker_config_dir.display().to_string())];
    let mut d = b.spawn_with_env(&args, "oci", &docker)?;
    d.wait_ready(Duration::from_secs(120)).await?;
    let mut out = Vec::new();
    for n in 2..(2 + rounds as u64) {
        let (file, digest) = version(n)?;
        publish(b, registry, cosign, &file)?;
        let t0 = Instant::now();
        while active_digest(&d).await? != digest {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "version {n} not active after 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.push(t0.elapsed());
        eprintln!("bench: 14. version {n} active {:.2?} after its push", t0.elapsed());
    }
    d.stop(Duration::from_secs(30)).await?;
    Ok(out)
}

async fn pull_costs(
    registry: &Registry,
    cosign: &Cosign,
    key: &Path,
    label: &str,
    file: &Path,
    b: &Bench,
) -> Result<Pulls> {
    let repo = format!("rules/pull-{}", label.to_lowercase().replace(' ', "-"));
    let digest = push(b, registry, file, &format!("{repo}:v1"))?;
    cosign.sign(registry, &repo, &digest, "bench")?;
    let settings = RegistrySettings {
        credentials: Some(registry.docker_config.clone()),
        ca_file: Some(registry.ca.clone()),
        ..RegistrySettings::default()
    };
    let client = settings.client()?;
    let source = Source::parse(&registry.source(&format!("{repo}:v1"))).map_err(anyhow::Error::msg)?;
    let auth = settings.auth(source.registry())?;
    let keys = [TrustedKey::load(key).map_err(anyhow::Error::msg)?];
    let mut p = Pulls { label: label.into(), bytes: std::fs::metadata(file)?.len(), ..Pulls::default() };
    for _ in 0..7 {
        for (policy, into) in [(VerifyPolicy::Off, &mut p.off), (VerifyPolicy::Required, &mut p.verified)] {
            let pull = Pull { client: &client, auth: &auth, keys: &keys, policy, limit: 64 << 20 };
            let t0 = Instant::now();
            pull.pull(&source).await?;
            into.push(t0.elapsed());
        }
    }
    Ok(p)
}

/// Runs the section: `rounds` signed pushes to a running syncer, and 7 pulls of each
/// component with and without verification, against a registry started here.
pub async fn measure(b: &Bench, rounds: usize) -> Figures {
    let mut f = Figures::default();
    let setup = || -> Result<(Registry, Cosign, std::path::PathBuf)> {
        let registry = Registry::start("bench-oci")?;
        let cosign = Cosign::new(&b.work.join("oci-keys"))?;
        let key = cosign.key_pair("bench")?;
        Ok((registry, cosign, key))
    };
    let (registry, cosign, key) = match setup() {
        Ok(v) => v,
        Err(e) => {
            f.errors.push(format!("setup: {e:#}"));
            return f;
        }
    };
    match activations(b, &registry, &cosign, &key, rounds).await {
        Ok(a) => f.activations = a,
        Err(e) => f.errors.push(format!("activation: {e:#}")),
    }
    let mut components = vec![("Rust stamp".to_string(), b.plugins.join("downsync_plugin_testing_stamp.wasm"))];
    match crate::plugins::guest_plugin_path("python_hpa_replicas") {
        Ok(p) => components.push(("Python hpa-replicas".into(), p)),
        Err(e) => f.errors.push(format!("the Python component: {e:#}")),
    }
    for (label, file) in components {
        match pull_costs(&registry, &cosign, &key, &label, &file, b).await {
            Ok(p) => f.pulls.push(p),
            Err(e) => f.errors.push(format!("pulls of {label}: {e:#}")),
        }
    }
    f
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// The section's tables.
pub fn section(f: &Figures) -> Section {
    let mut s = Section::new(14, "Plugins from an OCI registry", &["measure", "what", "median", "min", "max", "runs"]);
    let row = |s: &mut Section, what: &str, of: &str, v: &[Duration]| {
        let (lo, hi) = (v.iter().min().copied(), v.iter().max().copied());
        s.row(vec![
            what.into(),
            of.into(),
            super::opt(median(v), secs),
            super::opt(lo, secs),
            super::opt(hi, secs),
            v.len().to_string(),
        ]);
    };
    row(&mut s, "push to active", &format!("Rust stamp, checkSeconds {INTERVAL}"), &f.activations);
    for p in &f.pulls {
        let what = format!("{} ({})", p.label, mib(p.bytes));
        row(&mut s, "pull, verify: off", &what, &p.off);
        row(&mut s, "pull, verify: required", &what, &p.verified);
    }
    let worst = f.activations.iter().max().copied();
    s.goal(
        &format!("push to active ≤ the check interval ({INTERVAL} s) + 2 s, Rust component"),
        worst.map(|w| w <= Duration::from_secs(INTERVAL + 2)),
        format!("worst of {} pushes {}", f.activations.len(), super::opt(worst, secs)),
    );
    for p in &f.pulls {
        if let (Some(off), Some(on)) = (median(&p.off), median(&p.verified)) {
            s.note(format!(
                "Verification of {} adds {} per pull (median {} against {}): the signature manifest, its payload and one \
                 ECDSA P-256 check.",
                p.label,
                secs(on.saturating_sub(off)),
                secs(on),
                secs(off)
            ));
        }
    }
    s.note(format!(
        "A local registry (CNCF Distribution v3.1.2, TLS and htpasswd) on loopback; signatures by the cosign CLI \
         (v2.6.5, offline key). Push to active: each new version is pushed to a staging tag, signed by digest, and the \
         live tag moved to it; the clock starts when the tag moved and stops when `/plugins` shows the version \
         active (mode direct, checkSeconds {INTERVAL}). It waits for the next check (0 to {INTERVAL} s), then the \
         pull, the checks and the compile. Pulls: the same client as the syncer's, 7 of each, interleaved."
    ));
    for e in &f.errors {
        s.note(format!("Error: {e}"));
    }
    s
}
