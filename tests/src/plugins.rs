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
    "downsync-plugin-testing-counter",
    "downsync-plugin-testing-reserved",
    "downsync-plugin-testing-describe-panic",
    "downsync-plugin-testing-legacy",
    "downsync-plugin-testing-metadata-reader",
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

/// The guest toolchains and the example components built with them (Python, JavaScript).
#[derive(Debug, Clone)]
pub struct GuestTools {
    /// The componentize-py executable.
    pub componentize_py: PathBuf,
    /// The jco executable.
    pub jco: PathBuf,
    /// The bundler jco ships.
    pub rolldown: PathBuf,
    /// The folder holding `python_hpa_replicas.wasm` and `js_hpa_replicas.wasm`.
    pub build_dir: PathBuf,
}

static GUEST: OnceLock<Result<GuestTools, String>> = OnceLock::new();

/// The guest toolchains: from `DOWNSYNC_COMPONENTIZE_PY`, `DOWNSYNC_JCO`, `DOWNSYNC_ROLLDOWN`
/// and `DOWNSYNC_GUEST_BUILD_DIR` (tests/run.sh sets them), else installed and built here by
/// `tests/guest-toolchains.sh` (cached; slow the first time). A toolchain that cannot be had is
/// an error: these tests are never skipped.
pub fn guest_tools() -> Result<GuestTools> {
    GUEST.get_or_init(|| guest().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

/// The path of one example component built by the guest toolchains (`python_hpa_replicas`).
pub fn guest_plugin_path(name: &str) -> Result<PathBuf> {
    let path = guest_tools()?.build_dir.join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!("{} was not built by tests/guest-toolchains.sh", path.display());
    }
    Ok(path)
}

fn guest() -> Result<GuestTools> {
    const VARS: [&str; 4] =
        ["DOWNSYNC_COMPONENTIZE_PY", "DOWNSYNC_JCO", "DOWNSYNC_ROLLDOWN", "DOWNSYNC_GUEST_BUILD_DIR"];
    let mut values: Vec<Option<PathBuf>> = VARS.iter().map(|v| std::env::var_os(v).map(PathBuf::from)).collect();
    if values.iter().any(Option::is_none) {
        let script = crate::repo_root().join("tests/guest-toolchains.sh");
        let out = Command::new("bash").arg(&script).output()?;
        if !out.status.success() {
            bail!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) else { continue };
            if let Some(i) = VARS.iter().position(|v| *v == name) {
                values[i] = Some(PathBuf::from(value));
            }
        }
    }
    let mut it = values.into_iter().zip(VARS).map(|(v, name)| v.ok_or_else(|| anyhow!("{name} is not set")));
    let mut next = || it.next().unwrap_or_else(|| Err(anyhow!("missing")));
    Ok(GuestTools { componentize_py: next()?, jco: next()?, rolldown: next()?, build_dir: next()? })
}
