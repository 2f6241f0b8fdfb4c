//! The downsync binary: process set-up around [`cli::run`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Args, Command};

/// Starts logging to stderr. `quiet` (the commands that answer on stdout and exit, such as
/// `plugin check`) logs warnings and errors only, unless RUST_LOG says otherwise: how the
/// engine compiled is not what a person checking a plugin asked.
fn init_logs(format: cli::args::LogFormat, quiet: bool) {
    // kube's client logs every failed connection attempt at ERROR without naming the server;
    // downsync reports a lost connection itself, once per side, with the URL.
    let level = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},kube_client=error,kube_client::client::builder=off"))
    });
    // Colour only for a person at a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        cli::args::LogFormat::Text => builder.init(),
        cli::args::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// One malloc arena instead of glibc's default of eight per core. Each thread that meets a
/// locked arena gets another, and every arena keeps its own freed memory: measured at 10,000
/// objects (docs/benchmarks.md, section 4), the restart's peak RSS fell from 131.4 to 117.9 MiB,
/// with the per-thread caches in front of the arena keeping malloc off the lock. A
/// `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread
        // exists, and a refusal (return 0) leaves the default in place.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Lets a closed stdout end the process quietly, as it ends `cat` or `grep`
/// (`downsync plugin check X | head -1`): SIGPIPE back to its default action. Rust ignores it,
/// so that a write to a closed pipe fails instead, and `println!` then panics. Not for `run`: a
/// long-lived process handles its failed writes itself.
fn die_quietly_on_a_closed_stdout() {
    // SAFETY: signal(2) only resets a disposition; it runs before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    if !matches!(args.command, Command::Run(_)) {
        die_quietly_on_a_closed_stdout();
    }
    init_logs(args.log_format, args.command.is_quiet());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        // The cause chain on one line; no backtrace even with RUST_BACKTRACE set: these are
        // the user's errors (a setting, a cluster), not the program's.
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause said once: many errors here already end
/// with their cause's text (`cannot read plugin x.wasm: No such file or directory (os error 2)`),
/// and a cause's line breaks (a parser's dump) become spaces.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}
