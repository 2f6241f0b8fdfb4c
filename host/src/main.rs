//! The downsync command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use downsync::plugin::{EngineConfig, PluginEngine};

/// downsync: syncs desired objects from an upstream Kubernetes API into a downstream cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with rule plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Loads a plugin component, checks it against the downsync:rules world and prints what it describes.
    Check {
        /// The `.wasm` component.
        file: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Command::Plugin(PluginCommand::Check { file }) => {
            let engine = PluginEngine::new(EngineConfig::default()).context("starting the wasm engine")?;
            let plugin = engine.load_file(&file).with_context(|| format!("checking {}", file.display()))?;
            println!("{}", serde_json::to_string_pretty(plugin.info())?);
            println!("sha256: {}", plugin.digest());
            Ok(())
        }
    }
}
