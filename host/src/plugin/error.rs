//! Errors of the plugin runtime, each naming the plugin and, for calls, the object.

use std::path::PathBuf;

/// What can go wrong loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be configured.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(#[source] wasmtime::Error),
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A plugin or fixture file is larger than the limit; found before reading it.
    #[error(
        "{path} is {}, over the limit of {} ({setting}); a larger file is refused before it is read",
        human_bytes(*size),
        human_bytes(*limit)
    )]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
        /// What sets the limit.
        setting: &'static str,
    },
    /// An entry of the plugins folder is a link that leads out of it.
    #[error(
        "{path} leads to {target}, outside the plugins folder {folder}: only links inside it (a ConfigMap's ..data) are followed"
    )]
    OutsideFolder {
        /// The entry.
        path: PathBuf,
        /// Where its links lead.
        target: PathBuf,
        /// The plugins folder.
        folder: PathBuf,
    },
    /// The file is not a valid component, or could not be compiled.
    #[error("plugin {plugin}: not a loadable wasm component: {source}")]
    Compile {
        /// The plugin (file name).
        plugin: String,
        /// Why.
        #[source]
        source: wasmtime::Error,
    },
    /// The file is not a WebAssembly component at all; found before compiling.
    #[error("plugin {plugin}: {what}")]
    NotAComponent {
        /// The plugin (file name).
        plugin: String,
        /// What the file is instead, and what to do.
        what: &'static str,
    },
    /// The component imports what the sandbox does not offer; found before compiling.
    #[error("plugin {plugin}: imports what the sandbox does not offer: {}; offered: {offered}", missing.join(", "))]
    Imports {
        /// The plugin (file name).
        plugin: String,
        /// The imports not offered.
        missing: Vec<String>,
        /// What is offered, for the message.
        offered: String,
    },
    /// The component's imports or exports do not match the `downsync:rules` world.
    #[error("plugin {plugin}: does not implement the `rule` world of downsync:rules@0.2.0 or @0.1.0: {source}")]
    WorldMismatch {
        /// The plugin.
        plugin: String,
        /// The linker's explanation.
        #[source]
        source: wasmtime::Error,
    },
    /// A call trapped, ran out of fuel, hit the deadline or the memory cap.
    #[error("plugin {plugin}: {hook} on {object} failed ({kind}): {message}")]
    Call {
        /// The plugin.
        plugin: String,
        /// The hook that was called.
        hook: &'static str,
        /// The object, as `Kind namespace/name`.
        object: String,
        /// The failure class.
        kind: CallFailure,
        /// The detail.
        message: String,
    },
    /// The plugin returned an error of its own.
    #[error("plugin {plugin}: {hook} on {object} returned an error: {message}")]
    Rejected {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The object.
        object: String,
        /// What the plugin said.
        message: String,
    },
    /// The plugin returned more than the host accepts.
    #[error("plugin {plugin}: {hook} on {object} returned {what} of {size} {unit}, over the limit of {limit}", unit = what.unit())]
    TooLarge {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The object.
        object: String,
        /// What was too large.
        what: Oversize,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin broke the output contract.
    #[error("plugin {plugin}: {hook} on {object} broke the contract ({violation}) at {path:?}: {message}")]
    Contract {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The object.
        object: String,
        /// Which part of the contract.
        violation: Violation,
        /// The JSON pointer at fault ("" for the whole output).
        path: String,
        /// What was wrong.
        message: String,
    },
    /// Two plugins handle a common kind and may write overlapping fields.
    #[error(
        "plugins {first} and {second} both handle {kind} and their scopes overlap: {first_pattern:?} and {second_pattern:?}"
    )]
    Overlap {
        /// The first plugin (by name).
        first: String,
        /// The second plugin.
        second: String,
        /// A group/kind both handle, as `group/kind` patterns.
        kind: String,
        /// The first plugin's overlapping scope pattern.
        first_pattern: String,
        /// The second plugin's overlapping scope pattern.
        second_pattern: String,
    },
    /// Two loaded components describe themselves with the same name.
    #[error("plugin name {name} is used by two components ({first_digest} and {second_digest})")]
    DuplicateName {
        /// The name.
        name: String,
        /// The digest of one component.
        first_digest: String,
        /// The digest of the other.
        second_digest: String,
    },
    /// A fixture could not be read or parsed.
    #[error("fixture {path}: {message}")]
    Fixture {
        /// The fixture file or folder.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A new version of a plugin failed its checks and was not swapped in.
    #[error("plugin {plugin} ({file}): new version {digest} refused: {message}")]
    Check {
        /// The plugin, by the name it describes itself with.
        plugin: String,
        /// Its file in the plugins folder.
        file: String,
        /// sha256 of the refused component.
        digest: String,
        /// Why.
        message: String,
    },
    /// The plugin folder could not be watched or listed.
    #[error("cannot watch plugin folder {path}: {message}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The watcher's or the file system's error.
        message: String,
    },
    /// A write scope covers a field downsync owns: the identity or the ownership stamp.
    #[error("plugin {plugin}: scope {scope:?} covers {path}, which only downsync may write")]
    ReservedScope {
        /// The plugin.
        plugin: String,
        /// The offending scope pattern.
        scope: String,
        /// The reserved JSON pointer it covers.
        path: String,
    },
    /// A registry source that cannot be followed as configured (`plugins.<name>.source`,
    /// `keys`, `verify`), or a pull that failed.
    #[error("{setting}: {message}")]
    Source {
        /// The setting at fault (`plugins.<name>.keys[0]`).
        setting: String,
        /// What is wrong, naming the setting or the source.
        message: String,
    },
    /// A thread or runtime of the plugin lifecycle could not start.
    #[error("{0}")]
    Start(String),
    /// `describe` returned something unusable.
    #[error("plugin {plugin}: describe is not sane: {message}")]
    Describe {
        /// The plugin.
        plugin: String,
        /// What was wrong.
        message: String,
    },
}

/// How a call failed; used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallFailure {
    /// A wasm trap (panic, unreachable, bad memory access).
    Trap,
    /// The deterministic fuel budget ran out.
    OutOfFuel,
    /// The wall-clock epoch deadline passed.
    Deadline,
    /// The memory cap was hit.
    Memory,
    /// The output broke the contract.
    Contract,
    /// The plugin returned an error of its own.
    Rejected,
}

/// What a plugin returned too much of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Oversize {
    /// An object's JSON text (bytes).
    Object,
    /// An ignore-paths list (paths).
    List,
    /// One ignore path (bytes).
    Path,
}

impl Oversize {
    /// The unit its size is counted in.
    pub fn unit(self) -> &'static str {
        match self {
            Self::List => "paths",
            Self::Object | Self::Path => "bytes",
        }
    }
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Object => "an object",
            Self::List => "a list",
            Self::Path => "a path",
        })
    }
}

/// Which part of the output contract a plugin broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// The output is not JSON, or not a JSON object.
    Output,
    /// apiVersion, kind, metadata.name or metadata.namespace changed.
    Identity,
    /// A field outside the declared write scope changed.
    Scope,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Output => "output",
            Self::Identity => "identity",
            Self::Scope => "scope",
        })
    }
}

impl Error {
    /// The failure class of a failed call, for metrics; None for load-time errors.
    pub fn failure(&self) -> Option<CallFailure> {
        match self {
            Self::Call { kind, .. } => Some(*kind),
            Self::Contract { .. } | Self::TooLarge { .. } => Some(CallFailure::Contract),
            Self::Rejected { .. } => Some(CallFailure::Rejected),
            _ => None,
        }
    }
}

impl CallFailure {
    /// Every class, in a fixed order.
    pub const ALL: [Self; 6] =
        [Self::Trap, Self::OutOfFuel, Self::Deadline, Self::Memory, Self::Contract, Self::Rejected];

    /// A short lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::OutOfFuel => "out_of_fuel",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Contract => "contract",
            Self::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of plugin operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A size for a person: `512 bytes`, `1.5 KiB`, `64.0 MiB`, `1.0 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
