//! The deployables of the pipeline: `pipeline` (all roles in one process,
//! plus `load` and `bench`) and one binary per role (`pipeline-api`,
//! `pipeline-transformer`, `pipeline-save2db`, `pipeline-activity`). They
//! only parse configuration, build the backends from URLs and run the
//! services of `pipeline-core` until a shutdown signal.

pub mod backends;
pub mod bench;
pub mod bench_archive;
pub mod maintenance;
pub mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Install the log subscriber: `RUST_LOG` or `default` as the filter, JSON
/// lines if asked, colours only on a terminal.
pub fn init_tracing(json: bool, default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
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

/// Run `future` on a multi-threaded runtime and turn its result into an exit code.
pub fn block_on(
    future: impl std::future::Future<Output = Result<(), pipeline_core::Error>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "One role of the pipeline; every flag also reads its PIPELINE_* variable"
)]
struct RoleCli {
    #[command(flatten)]
    args: serve::ServeArgs,
}

/// `main` of a one-role binary.
pub fn role_main(roles: serve::Roles) -> ExitCode {
    let cli = RoleCli::parse();
    block_on(async move {
        init_tracing(cli.args.log_json, "info,sqlx=warn,sea_orm=warn,lapin=warn");
        serve::run(cli.args, roles).await
    })
}

/// A reqwest client builder, after making sure rustls has its crypto
/// provider (reqwest is built without one; see `pipeline-object-store`).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    pipeline_object_store::install_crypto_provider();
    reqwest::Client::builder()
}
