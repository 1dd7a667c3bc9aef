//! The command line of `pipeline`, as a library: a program that calls
//! [`run`] with its own transforms gets every role, `serve`, the load and
//! benchmark tools and the maintenance commands, with the same flags and
//! `PIPELINE_*` variables as the stock binary.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let registry = pipeline::TransformRegistry::with_builtins();
//!     pipeline::cli::run(registry)
//! }
//! ```

mod admin;
mod args;
mod bench;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod bench_archive;
mod keys;
mod load;
mod maintenance;
pub mod prometheus;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pipeline_core::{Error, TransformRegistry};

pub use admin::AdminArgs;
pub use args::{ServeArgs, ValidateMode};
pub use bench::BenchArgs;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use bench_archive::ArchiveBenchArgs;
pub use keys::KeysArgs;
pub use load::{LoadArgs, LoadReport, drive};
pub use maintenance::{ExpireArgs, GcArgs, ReplayArgs, StoreArgs};
pub use upload::UploadArgs;

use crate::Roles;

/// Default log filter of the long-running commands.
const SERVE_LOG: &str = "info,sqlx=warn,sea_orm=warn,lapin=warn";

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
    /// Run every role in one process.
    Serve(ServeArgs),
    /// Run the HTTP API (with its results consumer) alone.
    Api(ServeArgs),
    /// Run a transformer alone.
    Transformer(ServeArgs),
    /// Run the archive writer alone.
    Save2db(ServeArgs),
    /// Run the activity log writer alone.
    Activity(ServeArgs),
    /// Send files or directory trees to a server and fetch the results
    /// into a directory; a stopped run started again resumes.
    Upload(UploadArgs),
    /// Load-test a running server over HTTP.
    Load(LoadArgs),
    /// Measure the bare transform rate, then an in-process server under load.
    Bench(BenchArgs),
    /// Measure archive throughput (rows/s, MB/s) on each database.
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    BenchArchive(ArchiveBenchArgs),
    /// Remove claim-check blobs that no archived job refers to.
    GcBlobs(GcArgs),
    /// Remove jobs older than the retention (PIPELINE_RETENTION_DAYS).
    Expire(ExpireArgs),
    /// Publish a queue's dead letters again (after fixing their cause).
    ReplayDead(ReplayArgs),
    /// Make, list and revoke API keys (kept hashed in the archive database).
    Keys(KeysArgs),
    /// Look into the broker's queues: depths, dead letters (peek, replay,
    /// purge).
    Admin(AdminArgs),
}

/// Parse the command line and run it with `registry`; the exit code says
/// whether it succeeded (errors are printed on standard error).
pub fn run(registry: TransformRegistry) -> ExitCode {
    let cli = Cli::parse();
    if let Command::Upload(a) = cli.command {
        return upload::run(a);
    }
    block_on(async move {
        match cli.command {
            Command::Serve(a) => serve(a, Roles::ALL, registry).await,
            Command::Api(a) => serve(a, Roles::API, registry).await,
            Command::Transformer(a) => serve(a, Roles::TRANSFORMER, registry).await,
            Command::Save2db(a) => serve(a, Roles::SAVE2DB, registry).await,
            Command::Activity(a) => serve(a, Roles::ACTIVITY, registry).await,
            // Handled above: it has exit codes of its own.
            Command::Upload(_) => Ok(()),
            Command::Load(a) => load::load(a).await,
            Command::Bench(a) => {
                init_tracing(false, "warn");
                bench::bench(a, registry).await
            }
            #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
            Command::BenchArchive(a) => {
                init_tracing(false, "warn");
                bench_archive::bench_archive(a).await
            }
            Command::GcBlobs(a) => {
                init_tracing(false, "warn");
                maintenance::gc_blobs(a).await
            }
            Command::Expire(a) => {
                init_tracing(false, "warn");
                maintenance::expire(a).await
            }
            Command::ReplayDead(a) => {
                init_tracing(false, "warn");
                maintenance::replay_dead(a).await
            }
            Command::Keys(a) => {
                init_tracing(false, "warn");
                keys::keys(a).await
            }
            Command::Admin(a) => {
                init_tracing(false, "warn");
                admin::admin(a).await
            }
        }
    })
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "One role of the pipeline; every flag also reads its PIPELINE_* variable"
)]
struct RoleCli {
    #[command(flatten)]
    args: ServeArgs,
}

/// `main` of a one-role program (`pipeline-api`, `pipeline-transformer`...):
/// the flags of `serve`, no subcommand.
pub fn run_role(roles: Roles, registry: TransformRegistry) -> ExitCode {
    let cli = RoleCli::parse();
    block_on(serve(cli.args, roles, registry))
}

/// Run `roles` until Ctrl-C or SIGTERM, then stop without losing accepted work.
async fn serve(args: ServeArgs, roles: Roles, registry: TransformRegistry) -> Result<(), Error> {
    #[cfg(feature = "otlp")]
    let otlp = {
        let service = match roles.name() {
            "all" | "mixed" => "pipeline".to_string(),
            one => format!("pipeline-{one}"),
        };
        match crate::otlp::OtlpConfig::from_env(&service)? {
            Some(config) => {
                let endpoint = config.endpoint_redacted();
                let (layer, exporter) = crate::otlp::start(config)?;
                install_tracing(args.log_json, SERVE_LOG, Some(Box::new(layer)));
                tracing::info!(%endpoint, "exporting spans to an OpenTelemetry collector");
                Some(exporter)
            }
            None => {
                install_tracing(args.log_json, SERVE_LOG, None);
                None
            }
        }
    };
    #[cfg(not(feature = "otlp"))]
    init_tracing(args.log_json, SERVE_LOG);
    let ran = serve_traced(args, roles, registry).await;
    #[cfg(feature = "otlp")]
    if let Some(exporter) = otlp {
        exporter.shutdown(std::time::Duration::from_secs(5)).await;
    }
    ran
}

async fn serve_traced(
    args: ServeArgs,
    roles: Roles,
    registry: TransformRegistry,
) -> Result<(), Error> {
    let render = prometheus::install()?;
    let running = args
        .builder(roles, registry)?
        .configure(move |s| s.metrics = Some(render))
        .start()
        .await?;
    match running.addr() {
        Some(addr) => match running.auth_mode() {
            Some("none") => {
                println!("pipeline listening on http://{addr} (auth off: PIPELINE_AUTH=none)")
            }
            Some(mode) => println!("pipeline listening on http://{addr} (auth: {mode})"),
            None => println!("pipeline listening on http://{addr}"),
        },
        None => println!("pipeline worker running ({})", roles.name()),
    }
    running.run_until_signal().await
}

/// Install the log subscriber: `RUST_LOG` or `default` as the filter, JSON
/// lines if asked, colours only on a terminal.
pub fn init_tracing(json: bool, default: &str) {
    install_tracing(json, default, None);
}

/// A layer of the subscriber, with its own filter: the log lines, the
/// OpenTelemetry exporter.
type ExtraLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static>;

/// [`init_tracing`], with `extra` (the OpenTelemetry exporter) beside the
/// log lines: the filter applies to the log lines only.
fn install_tracing(json: bool, default: &str, extra: Option<ExtraLayer>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines: ExtraLayer = if json {
        lines.json().with_filter(filter).boxed()
    } else {
        lines.with_filter(filter).boxed()
    };
    let exporting = extra.is_some();
    let mut layers = vec![lines];
    layers.extend(extra);
    // A second call (a program that installed its own) keeps the first.
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
        && exporting
    {
        eprintln!(
            "warning: a tracing subscriber was installed already: spans are not exported (add pipeline::otlp's layer to it)"
        );
    }
}

/// A multi-threaded runtime, or the exit code of a program that could not
/// start one (the reason is printed).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Run `future` on a multi-threaded runtime and turn its result into an exit code.
pub fn block_on(future: impl std::future::Future<Output = Result<(), Error>>) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A reqwest client builder, after making sure rustls has its process-wide
/// crypto provider: in a build where another crate turned on reqwest's
/// rustls without a provider, building a client would panic otherwise.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
