//! The tools of the chart and monitoring tests, built (cached) by tests/helm/build.sh: `helm`
//! v4, `rulecheck` (Prometheus' rule file parser) beside it, and the Prometheus Operator CRDs in
//! `../crds` from there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};

use crate::repo_root;

static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The folder of `helm` and `rulecheck`: that of `DOWNSYNC_HELM` (tests/run.sh sets it), or
/// the one tests/helm/build.sh prints (building them once per machine).
fn bin_dir() -> Result<PathBuf> {
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("DOWNSYNC_HELM") {
            return Path::new(&path)
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| "DOWNSYNC_HELM has no folder".into());
        }
        let script = repo_root().join("tests/helm/build.sh");
        let out =
            Command::new("bash").arg(&script).output().map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr)));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().map(PathBuf::from).ok_or_else(|| format!("{} printed no folder", script.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The helm binary.
pub fn helm() -> Result<PathBuf> {
    Ok(match std::env::var_os("DOWNSYNC_HELM") {
        Some(path) => PathBuf::from(path),
        None => bin_dir()?.join("helm"),
    })
}

/// The rulecheck binary.
pub fn rulecheck() -> Result<PathBuf> {
    let path = bin_dir()?.join("rulecheck");
    ensure!(path.is_file(), "{} is missing: run tests/helm/build.sh", path.display());
    Ok(path)
}

/// The PodMonitor and PrometheusRule CRD files.
pub fn monitoring_crds() -> Result<Vec<PathBuf>> {
    let dir = bin_dir()?.parent().map(|p| p.join("crds")).context("the tools folder has no parent")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} (tests/helm/build.sh puts the CRDs there)", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    ensure!(files.len() == 2, "expected the PodMonitor and PrometheusRule CRDs in {}: {files:?}", dir.display());
    Ok(files)
}
