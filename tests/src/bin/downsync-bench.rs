//! downsync-bench: the benchmarks of issue 6, as a markdown table in `docs/benchmarks.md`.
//!
//! ```sh
//! cargo run --release -p downsync-tests --bin downsync-bench -- --sizes 10000,50000 --out docs/benchmarks.md
//! cargo run --release -p downsync-tests --bin downsync-bench -- --only rules,coldstart
//! ```
//!
//! It starts two local control planes unless `DOWNSYNC_UPSTREAM_KUBECONFIG`
//! and `DOWNSYNC_DOWNSTREAM_KUBECONFIG` are set, builds the plugin components and (without
//! `--downsync`) the release `downsync` binary, and stops what it started when it ends.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use downsync_tests::bench::{self, Options, Part};

/// Measures downsync against a naive copier and its WASM rules against native Rust.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Object counts for the sync sections (1–4). 100,000 (`--sizes 10000,50000,100000`) is
    /// for a bench run on a machine of its own: it is refused under CI (`CI` set).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    sizes: Vec<usize>,
    /// Where the markdown report is written.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The downsync binary; default: build and use `$CARGO_TARGET_DIR/release/downsync`.
    #[arg(long)]
    downsync: Option<PathBuf>,
    /// Run only these sections (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Part>,
    /// downsync `--workers`; also the copier's and the bench's own write concurrency.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Upstream namespaces the objects are spread over.
    #[arg(long, default_value_t = 4)]
    namespaces: usize,
    /// Run downsync without the built-in plugins in sections 1–4.
    #[arg(long)]
    no_plugins: bool,
    /// Objects in flight during the hot-reload swaps.
    #[arg(long, default_value_t = 1000)]
    reload_objects: usize,
    /// Plugin swaps in the hot-reload section.
    #[arg(long, default_value_t = 20)]
    swaps: usize,
    /// Upstream updates per second during the hot-reload swaps.
    #[arg(long, default_value_t = 50.0)]
    churn: f64,
    /// Section 8: holders killed with SIGKILL, and as many stopped with SIGTERM.
    #[arg(long, default_value_t = 10)]
    ha_kills: usize,
    /// Section 8: objects of the initial sync by 1 process against 3 sharded replicas.
    #[arg(long, default_value_t = 10_000)]
    ha_objects: usize,
    /// Section 4: also profile the heap of a restart at the largest size (needs heaptrack).
    #[arg(long)]
    heap_profile: bool,
    /// Section 11: Deployments shared with an HPA stand-in and an admission policy.
    #[arg(long, default_value_t = 1000)]
    coexist_objects: usize,
    /// Section 11: an earlier `downsync` binary to compare against (API calls, initial sync).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Section 13: kcp workspaces bound to one APIExport.
    #[arg(long, default_value_t = 50)]
    kcp_workspaces: usize,
    /// Section 13: ConfigMaps in each workspace.
    #[arg(long, default_value_t = 100)]
    kcp_per_workspace: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if std::env::var_os("CI").is_some()
        && let Some(n) = a.sizes.iter().find(|n| **n > 50_000)
    {
        anyhow::bail!("--sizes {n}: sizes above 50,000 are for the bench only, not for CI (CI is set)");
    }
    let opts = Options {
        sizes: a.sizes,
        out: a.out,
        downsync: a.downsync,
        only: a.only,
        workers: a.workers.max(1),
        namespaces: a.namespaces.max(1),
        builtin_plugins: !a.no_plugins,
        reload_objects: a.reload_objects.max(1),
        swaps: a.swaps,
        churn: a.churn,
        ha_kills: a.ha_kills,
        ha_objects: a.ha_objects,
        heap_profile: a.heap_profile,
        coexist_objects: a.coexist_objects.max(2),
        baseline: a.baseline,
        kcp_workspaces: (a.kcp_workspaces.max(1), a.kcp_per_workspace.max(1)),
    };
    let report = bench::run(opts).await?;
    println!("{}", report.markdown());
    Ok(())
}
