//! The built plugin components: built once per process for wasm32-wasip2 with cargo.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};

/// The plugin crates in `plugins/` that build to components.
pub const PLUGIN_CRATES: &[&str] = &[
    "downsync-plugin-minimal",
    "downsync-plugin-service",
    "downsync-plugin-persistent-volume",
    "downsync-plugin-immutable-config",
    "downsync-plugin-service-account",
    "downsync-example-hpa-replicas",
    "downsync-plugin-testing-faulty",
    "downsync-plugin-testing-overlap",
    "downsync-plugin-testing-stamp",
    "downsync-plugin-testing-reserved",
    "downsync-plugin-testing-describe-panic",
    "downsync-plugin-testing-legacy",
];

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The folder holding `<crate_name_with_underscores>.wasm` for every plugin crate.
///
/// `DOWNSYNC_PLUGIN_BUILD_DIR` points at prebuilt components (the test script builds them
/// once); otherwise they are built here with the `plugin` profile.
pub fn built_plugins_dir() -> Result<PathBuf> {
    BUILT.get_or_init(|| build().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

/// The path of one plugin's component.
pub fn plugin_path(crate_name: &str) -> Result<PathBuf> {
    let path = built_plugins_dir()?.join(format!("{}.wasm", crate_name.replace('-', "_")));
    if !path.is_file() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

fn build() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DOWNSYNC_PLUGIN_BUILD_DIR") {
        return Ok(dir.into());
    }
    let root = crate::repo_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(["build", "--quiet", "--target", "wasm32-wasip2", "--profile", "plugin"]);
    for c in PLUGIN_CRATES {
        cmd.args(["-p", c]);
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("building the plugins failed; is the target installed? run: rustup target add wasm32-wasip2");
    }
    Ok(target_dir.join("wasm32-wasip2").join("plugin"))
}
