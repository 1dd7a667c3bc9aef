//! `pipeline`: the all-in-one server and CLI.
//!
//! - `pipeline serve`: API + transformer + save2db + results consumer +
//!   activity log in one process.
//! - `pipeline load`: drive a running server over HTTP and report images/s
//!   and latency percentiles.
//! - `pipeline bench`: the bare transform rate and an in-process server under
//!   load, in one run.

mod backends;
mod bench;
mod serve;

use clap::{Parser, Subcommand};

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
}

fn init_tracing(json: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                init_tracing(args.log_json, "info,sqlx=warn,sea_orm=warn");
                serve::run(args).await
            }
            Command::Load(args) => bench::load(args).await,
            Command::Bench(args) => {
                init_tracing(false, "warn");
                bench::bench(args).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
