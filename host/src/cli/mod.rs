//! The commands of the downsync binary, each a small function over the library: `run` and
//! `diff` from the flags' configuration, the plugin tools, and the clients of a running
//! downsync's operations endpoints (`explain`, `plugin status`) and of its Leases (`shards`).

pub(crate) mod args;
mod diff;
mod explain;
mod ops_client;
mod plugin;
mod registry;
mod replay;
mod shards;
mod unverified;

use std::process::ExitCode;

use anyhow::Result;
use downsync::app::RunOptions;

use args::{Args, Command, PluginCommand};

/// Runs the command `args` names.
pub(crate) async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Run(run) => {
            let (once, insecure_endpoints) = (run.once, run.insecure_endpoints);
            let config = run.into_config()?;
            let opts = RunOptions { once, instance: std::env::var("POD_NAME").ok(), insecure_endpoints };
            let summary = downsync::app::run(config, opts, shutdown_signal()).await?;
            if once && summary.failed > 0 {
                eprintln!("{} objects synced, {} failed; see the log above", summary.synced, summary.failed);
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(source) => {
            let mut out = String::new();
            let result = diff::diff(source.into_config()?, &mut out).await;
            print!("{out}");
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shards(a) => shards::show(a).await,
        Command::Explain(a) => explain::show(a).await,
        Command::Plugin(PluginCommand::Status { endpoint, json }) => plugin::status(&endpoint, json).await,
        Command::Plugin(PluginCommand::Promote { file }) => plugin::promote(&file),
        Command::Plugin(PluginCommand::Replay { file, against_cluster: _, source }) => {
            let mut out = String::new();
            let result = replay::replay(source.into_config()?, &file, &mut out).await;
            print!("{out}");
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check { file, budget }) => plugin::check(&file, &budget),
        Command::Plugin(PluginCommand::Test { file, fixtures, budget }) => plugin::test(&file, &fixtures, &budget),
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk }) => plugin::new(name, lang, dir, sdk),
        Command::Plugin(PluginCommand::Push { file, reference, registry, budget }) => {
            registry::push_file(&file, &reference, &registry, &budget).await
        }
        Command::Plugin(PluginCommand::Pull { reference, key, no_verify, out, registry }) => {
            registry::pull_file(&reference, &key, no_verify, out, &registry).await
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
