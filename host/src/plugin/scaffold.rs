//! `downsync plugin new`: writes a plugin skeleton (Rust, Python or JavaScript) with fixtures
//! that pass `downsync plugin test` as generated.
//!
//! The templates live in `host/templates/plugin/` and are compiled into the binary, so the
//! command works from an installed binary. The Python and JavaScript skeletons carry a copy of
//! their SDK and of the WIT: such a folder builds on its own with the pinned tool
//! (componentize-py, jco). The Rust skeleton is its own cargo workspace with a path dependency
//! on the Rust SDK of a downsync checkout (`--sdk`, or found above the target folder or the
//! working directory), and the checkout's `Cargo.lock`, so it builds with the versions the SDK
//! is tested with.

use std::path::{Path, PathBuf};

/// The guest language of a skeleton.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `plugins/sdk` (cargo, wasm32-wasip2).
    Rust,
    /// Python, with the `downsync_rules` package (componentize-py 0.25.1).
    Python,
    /// JavaScript, with the `downsync-rules` package (jco 1.35.0, QuickJS backend).
    Js,
}

/// What went wrong writing a skeleton.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin name is not a valid `describe` name.
    #[error("plugin name {0:?} must be 1-63 lowercase letters, digits or '-', starting with a letter")]
    Name(String),
    /// The target folder exists and is not empty.
    #[error("{} exists and is not empty; choose another --dir", .0.display())]
    NotEmpty(PathBuf),
    /// No Rust SDK was given or found.
    #[error(
        "no downsync Rust SDK found above {} or the working directory: pass --sdk PATH to a \
         checkout's plugins/sdk",
        .0.display()
    )]
    NoSdk(PathBuf),
    /// `--sdk` does not point at the SDK crate.
    #[error("{} is not downsync's Rust SDK (plugins/sdk with a Cargo.toml naming downsync-plugin-sdk)", .0.display())]
    BadSdk(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One file of a skeleton: its path inside the folder and its template text.
type Template = (&'static str, &'static str);

const FIXTURES: &[Template] = &[
    ("fixtures/kept/desired.yaml", include_str!("../../templates/plugin/fixtures/kept/desired.yaml")),
    ("fixtures/kept/existing.yaml", include_str!("../../templates/plugin/fixtures/kept/existing.yaml")),
    ("fixtures/kept/expected.yaml", include_str!("../../templates/plugin/fixtures/kept/expected.yaml")),
    ("fixtures/first-create/desired.yaml", include_str!("../../templates/plugin/fixtures/first-create/desired.yaml")),
    ("fixtures/first-create/expected.yaml", include_str!("../../templates/plugin/fixtures/first-create/expected.yaml")),
];

const WIT: Template = ("wit/rules.wit", include_str!("../../../wit/rules.wit"));

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../../templates/plugin/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../templates/plugin/rust/src/lib.rs")),
    ("README.md", include_str!("../../templates/plugin/rust/README.md")),
];

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../../templates/plugin/python/app.py")),
    ("build.sh", include_str!("../../templates/plugin/python/build.sh")),
    ("README.md", include_str!("../../templates/plugin/python/README.md")),
    ("downsync_rules/__init__.py", include_str!("../../../plugins/sdk-python/downsync_rules/__init__.py")),
    ("downsync_rules/intent.py", include_str!("../../../plugins/sdk-python/downsync_rules/intent.py")),
    ("downsync_rules/pointer.py", include_str!("../../../plugins/sdk-python/downsync_rules/pointer.py")),
];

const JS: &[Template] = &[
    ("app.js", include_str!("../../templates/plugin/js/app.js")),
    ("package.json", include_str!("../../templates/plugin/js/package.json")),
    ("build.sh", include_str!("../../templates/plugin/js/build.sh")),
    ("README.md", include_str!("../../templates/plugin/js/README.md")),
    ("downsync-rules/index.js", include_str!("../../../plugins/sdk-js/index.js")),
    ("downsync-rules/package.json", include_str!("../../../plugins/sdk-js/package.json")),
];

/// What to write.
#[derive(Debug, Clone)]
pub struct Skeleton {
    /// The plugin's name (as `describe` gives it).
    pub name: String,
    /// The language.
    pub lang: Lang,
    /// The folder to write (must not exist, or be empty).
    pub dir: PathBuf,
    /// The Rust SDK (`plugins/sdk` of a checkout); found when not given. Rust only.
    pub sdk: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The files, relative to the folder.
    pub files: Vec<String>,
    /// The component file the build writes, relative to the folder.
    pub component: String,
    /// The command that builds it, run in the folder.
    pub build: String,
}

impl Skeleton {
    /// Writes the skeleton.
    pub fn write(&self) -> Result<Written> {
        if !valid_name(&self.name) {
            return Err(Error::Name(self.name.clone()));
        }
        if let Ok(mut entries) = std::fs::read_dir(&self.dir)
            && entries.next().is_some()
        {
            return Err(Error::NotEmpty(self.dir.clone()));
        }
        let krate = self.name.replace('-', "_");
        let mut sdk = String::new();
        let (templates, component, build): (Vec<Template>, String, String) = match self.lang {
            Lang::Rust => {
                let found = self.rust_sdk()?;
                // Cargo wants '/' in a path dependency on every platform.
                sdk = found.to_string_lossy().replace('\\', "/");
                let lock = found.join("../../Cargo.lock");
                if let Ok(text) = std::fs::read_to_string(&lock) {
                    // The checkout's lock: the skeleton builds with the versions the SDK is
                    // tested with (cargo drops the entries it does not need).
                    write_file(&self.dir.join("Cargo.lock"), &text, false)?;
                }
                (
                    RUST.iter().chain(FIXTURES).copied().collect(),
                    format!("target/wasm32-wasip2/plugin/{krate}.wasm"),
                    "cargo build --target wasm32-wasip2 --profile plugin".into(),
                )
            }
            Lang::Python => (
                PYTHON.iter().chain(FIXTURES).chain([&WIT]).copied().collect(),
                format!("{krate}.wasm"),
                "./build.sh".into(),
            ),
            Lang::Js => (
                JS.iter().chain(FIXTURES).chain([&WIT]).copied().collect(),
                format!("{krate}.wasm"),
                "./build.sh".into(),
            ),
        };
        let mut files = Vec::with_capacity(templates.len());
        for (path, text) in templates {
            let text = text.replace("{{name}}", &self.name).replace("{{crate}}", &krate).replace("{{sdk}}", &sdk);
            write_file(&self.dir.join(path), &text, path.ends_with(".sh"))?;
            files.push(path.to_string());
        }
        tracing::debug!(name = %self.name, lang = ?self.lang, dir = %self.dir.display(), "wrote a plugin skeleton");
        Ok(Written { files, component, build })
    }

    /// The Rust SDK: `--sdk`, else `plugins/sdk` in the nearest checkout above the target
    /// folder or the working directory. Made absolute, so the skeleton can move.
    fn rust_sdk(&self) -> Result<PathBuf> {
        if let Some(sdk) = &self.sdk {
            let abs = std::path::absolute(sdk).map_err(|source| Error::Io { path: sdk.clone(), source })?;
            return if is_sdk(&abs) { Ok(abs) } else { Err(Error::BadSdk(sdk.clone())) };
        }
        let start = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let cwd = std::env::current_dir().ok();
        let found = [Some(start.as_path()), cwd.as_deref()]
            .into_iter()
            .flatten()
            .flat_map(Path::ancestors)
            .map(|dir| dir.join("plugins/sdk"))
            .find(|candidate| is_sdk(candidate));
        found.ok_or(Error::NoSdk(start))
    }
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("name = \"downsync-plugin-sdk\""))
}

/// The name rules of `describe`, and a leading letter (it also names a crate and a file).
fn valid_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn write_file(path: &Path, text: &str, executable: bool) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("downsync-scaffold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn every_language_writes_fixtures_and_no_placeholder_is_left() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = temp(&format!("{lang:?}"));
            let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
            let written =
                Skeleton { name: "keep-note".into(), lang, dir: dir.clone(), sdk: Some(sdk) }.write().unwrap();
            assert!(written.files.iter().any(|f| f == "fixtures/kept/expected.yaml"), "{lang:?}");
            for f in &written.files {
                let text = std::fs::read_to_string(dir.join(f)).unwrap();
                assert!(!text.contains("{{name}}") && !text.contains("{{crate}}") && !text.contains("{{sdk}}"), "{f}");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_bad_name_or_a_full_folder_is_refused() {
        let dir = temp("refused");
        let mk = |name: &str| Skeleton { name: name.into(), lang: Lang::Python, dir: dir.clone(), sdk: None };
        assert!(matches!(mk("Bad_Name").write(), Err(Error::Name(_))));
        assert!(matches!(mk("9lives").write(), Err(Error::Name(_))));
        mk("fine").write().unwrap();
        assert!(matches!(mk("fine").write(), Err(Error::NotEmpty(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_sdk_path_is_refused() {
        let dir = temp("badsdk");
        let s = Skeleton { name: "x".into(), lang: Lang::Rust, dir, sdk: Some(std::env::temp_dir()) };
        assert!(matches!(s.write(), Err(Error::BadSdk(_))));
    }
}
