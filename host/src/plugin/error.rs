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
    /// The artifact cache could not be used.
    #[error("plugin artifact cache {path}: {source}")]
    Cache {
        /// The cache file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
    /// The component's imports or exports do not match the `downsync:rules` world.
    #[error("plugin {plugin}: does not implement downsync:rules@0.1.0 world `rule`: {source}")]
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
    /// The plugin broke the output contract.
    #[error("plugin {plugin}: {hook} on {object} broke the contract at {path}: {message}")]
    Contract {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The object.
        object: String,
        /// The JSON pointer at fault.
        path: String,
        /// What was wrong.
        message: String,
    },
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
}

impl CallFailure {
    /// A short lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::OutOfFuel => "out_of_fuel",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Contract => "contract",
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
