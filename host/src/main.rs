//! The downsync command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use downsync::plugin::{EngineConfig, Plugin, PluginEngine, fixtures};

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
    /// Runs a plugin against fixture cases (`CASE/{existing,desired,expected}.yaml` or
    /// `CASE/decision.yaml`); prints a diff for each failing case and exits non-zero.
    Test {
        /// The `.wasm` component.
        file: std::path::PathBuf,
        /// The folder holding one sub-folder per case.
        fixtures: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Command::Plugin(PluginCommand::Check { file }) => {
            let plugin = load(&file)?;
            print_info(&plugin);
            Ok(())
        }
        Command::Plugin(PluginCommand::Test { file, fixtures: dir }) => {
            let plugin = load(&file)?;
            let cases = fixtures::load_dir(&dir).with_context(|| format!("loading fixtures from {}", dir.display()))?;
            if cases.is_empty() {
                anyhow::bail!("no fixture cases in {}", dir.display());
            }
            let outcomes = fixtures::run_all(&plugin, &cases);
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok    {}", o.name),
                    Some(why) => println!("FAIL  {}\n{}", o.name, indent(why)),
                }
            }
            println!(
                "{} passed, {failed} failed ({} {})",
                outcomes.len() - failed,
                plugin.name(),
                plugin.info().version
            );
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn load(file: &std::path::Path) -> Result<Plugin> {
    let engine = PluginEngine::new(EngineConfig::default()).context("starting the wasm engine")?;
    engine.load_file(file).with_context(|| format!("checking {}", file.display()))
}

fn print_info(plugin: &Plugin) {
    let info = plugin.info();
    println!("name:    {}", info.name);
    println!("version: {}", info.version);
    println!("sha256:  {}", plugin.digest());
    println!("kinds:");
    for k in &info.kinds {
        let group = if k.group.is_empty() { "core" } else { k.group.as_str() };
        println!("  - {} ({group})", k.kind);
    }
    if info.scope.is_empty() {
        println!("scope:   none (it only decides; it writes no field)");
    } else {
        println!("scope:");
        for s in &info.scope {
            println!("  - {s}");
        }
    }
    let concrete: Vec<_> = info.kinds.iter().filter(|k| k.group != "*" && k.kind != "*").collect();
    if !concrete.is_empty() {
        println!("ignore-paths:");
        for k in concrete {
            match plugin.ignore_paths(&k.group, &k.kind) {
                Ok(called) if called.value.is_empty() => println!("  {}: none", k.kind),
                Ok(called) => println!("  {}: {}", k.kind, called.value.join(", ")),
                Err(e) => println!("  {}: error: {e}", k.kind),
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
}
