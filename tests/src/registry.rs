//! A real OCI registry (the CNCF Distribution registry, `tests/cluster/registry`) on loopback
//! with TLS from a test CA and htpasswd auth, and the cosign CLI, both built from their Go
//! modules; for the tests of plugins from registries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

use crate::repo_root;

static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The folder of `registry` and `cosign`: `DOWNSYNC_REGISTRY_BIN` (tests/run.sh sets it), else
/// built here by `tests/cluster/registry/build.sh` (cached).
pub fn bin_dir() -> Result<PathBuf> {
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DOWNSYNC_REGISTRY_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let out = Command::new("bash")
            .arg(repo_root().join("tests/cluster/registry/build.sh"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("tests/cluster/registry/build.sh failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().last().map(PathBuf::from).ok_or_else(|| "build.sh printed nothing".to_string())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A running registry; stopped (and its data removed) when dropped.
#[derive(Debug)]
pub struct Registry {
    /// Its name for registry.sh.
    pub name: String,
    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub addr: String,
    /// The test CA to trust.
    pub ca: PathBuf,
    /// A docker config file with its credentials (an image pull Secret's `.dockerconfigjson`).
    pub docker_config: PathBuf,
    /// The folder of that file, for `DOCKER_CONFIG`.
    pub docker_config_dir: PathBuf,
    /// The user and password.
    pub user: String,
    /// The password.
    pub password: String,
    /// Its state folder (storage in `data/`).
    pub dir: PathBuf,
    stopped: bool,
}

fn script() -> PathBuf {
    repo_root().join("tests/cluster/registry/registry.sh")
}

impl Registry {
    /// Starts registry `name` (TLS, htpasswd) for as long as this test process lives.
    pub fn start(name: &str) -> Result<Self> {
        Self::start_with(name, &[])
    }

    /// Starts registry `name` on plain HTTP without auth (`registry.sh up --insecure`).
    pub fn start_insecure(name: &str) -> Result<Self> {
        Self::start_with(name, &["--insecure"])
    }

    fn start_with(name: &str, extra: &[&str]) -> Result<Self> {
        let name = format!("{name}-{}", std::process::id());
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &name, "--owner-pid", &std::process::id().to_string()])
            .args(extra)
            .env("DOWNSYNC_REGISTRY_BIN", bin_dir()?)
            .output()
            .context("running registry.sh")?;
        if !out.status.success() {
            bail!("registry.sh up {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let env_file = stdout.lines().last().context("registry.sh printed no env file")?;
        let text = std::fs::read_to_string(env_file.trim()).with_context(|| format!("reading {env_file}"))?;
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let var = |k: &str| vars.get(k).map(|v| (*v).to_string()).with_context(|| format!("{k} is not in {env_file}"));
        Ok(Self {
            addr: var("DOWNSYNC_REGISTRY_ADDR")?,
            ca: var("DOWNSYNC_REGISTRY_CA")?.into(),
            docker_config: var("DOWNSYNC_REGISTRY_DOCKER_CONFIG")?.into(),
            docker_config_dir: var("DOWNSYNC_REGISTRY_DOCKER_CONFIG_DIR")?.into(),
            user: var("DOWNSYNC_REGISTRY_USER")?,
            password: var("DOWNSYNC_REGISTRY_PASSWORD")?,
            dir: var("DOWNSYNC_REGISTRY_DIR")?.into(),
            name,
            stopped: false,
        })
    }

    /// `oci://ADDR/REPO:TAG`.
    pub fn source(&self, repo_and_tag: &str) -> String {
        format!("oci://{}/{repo_and_tag}", self.addr)
    }

    /// Stops it now (its data goes with it).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let status = Command::new("bash").arg(script()).args(["down", &self.name]).status()?;
        anyhow::ensure!(status.success(), "registry.sh down {} failed", self.name);
        Ok(())
    }

    /// The `--credentials`/`--ca-file` flags of `downsync plugin push|pull` for it.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--credentials".into(),
            self.docker_config.display().to_string(),
            "--ca-file".into(),
            self.ca.display().to_string(),
        ]
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The cosign CLI with key pairs in one folder, signing offline (no transparency log).
#[derive(Debug)]
pub struct Cosign {
    bin: PathBuf,
    dir: PathBuf,
}

const PASSWORD: &str = "downsync-test";

impl Cosign {
    /// cosign, keeping its key pairs in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { bin: bin_dir()?.join("cosign"), dir: dir.to_path_buf() })
    }

    /// Generates key pair `prefix` (`PREFIX.key`, `PREFIX.pub`) and returns the public key's path.
    pub fn key_pair(&self, prefix: &str) -> Result<PathBuf> {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["generate-key-pair", "--output-key-prefix", prefix])
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("HOME", &self.dir)
            .output()?;
        anyhow::ensure!(out.status.success(), "cosign generate-key-pair: {}", String::from_utf8_lossy(&out.stderr));
        Ok(self.dir.join(format!("{prefix}.pub")))
    }

    /// Signs `repo@digest` in `registry` with key pair `prefix`, offline.
    pub fn sign(&self, registry: &Registry, repo: &str, digest: &str, prefix: &str) -> Result<()> {
        let key = self.dir.join(format!("{prefix}.key"));
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["sign", "--key"])
            .arg(&key)
            .args(["--tlog-upload=false", "--yes", &format!("{}/{repo}@{digest}", registry.addr)])
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("HOME", &self.dir)
            .env("DOCKER_CONFIG", &registry.docker_config_dir)
            .env("SSL_CERT_FILE", &registry.ca)
            .output()?;
        anyhow::ensure!(out.status.success(), "cosign sign: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}
