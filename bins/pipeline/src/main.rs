//! `pipeline`: the all-in-one server and CLI.
//!
//! - `pipeline serve`: API + transformer + save2db + results consumer +
//!   activity log in one process.
//! - `pipeline load`: drive a running server over HTTP and report images/s
//!   and latency percentiles.
//! - `pipeline bench`: the bare transform rate and an in-process server under
//!   load, in one run.

use clap::{Parser, Subcommand};
use pipeline::{bench, bench_archive, block_on, init_tracing, maintenance, serve};

#[derive(Debug, Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Upload and transform images through publish/subscribe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline in one process.
    Serve(serve::ServeArgs),
    /// Load-test a running server over HTTP.
    Load(bench::LoadArgs),
    /// Measure the bare transform rate, then an in-process server under load.
    Bench(bench::BenchArgs),
    /// Measure archive throughput (rows/s, MB/s) on each database.
    BenchArchive(bench_archive::ArchiveBenchArgs),
    /// Remove claim-check blobs that no archived job refers to.
    GcBlobs(maintenance::GcArgs),
    /// Publish a queue's dead letters again (after fixing their cause).
    ReplayDead(maintenance::ReplayArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                init_tracing(args.log_json, "info,sqlx=warn,sea_orm=warn,lapin=warn");
                serve::run(args, serve::Roles::ALL).await
            }
            Command::Load(args) => bench::load(args).await,
            Command::Bench(args) => {
                init_tracing(false, "warn");
                bench::bench(args).await
            }
            Command::BenchArchive(args) => {
                init_tracing(false, "warn");
                bench_archive::bench_archive(args).await
            }
            Command::GcBlobs(args) => {
                init_tracing(false, "warn");
                maintenance::gc_blobs(args).await
            }
            Command::ReplayDead(args) => {
                init_tracing(false, "warn");
                maintenance::replay_dead(args).await
            }
        }
    })
}
