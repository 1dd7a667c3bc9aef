//! Running roles: every role in one process (`pipeline serve`) or one
//! role per process (`pipeline-api`, `pipeline-transformer`...).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pipeline_core::services::{
    self, ActivityRecorder, ResultsConsumer, Save2Db, SubmitConfig, Submitter, Transformer,
    TransformerConfig, Validation,
};
use pipeline_core::transform::{BlockingPool, ImageLimits, Processor};
use pipeline_core::{ClaimCheck, Error, TransformRegistry};
use pipeline_http::{ApiConfig, ApiState};
use tokio::sync::watch;

use crate::backends::{self, redact};

/// Upload checks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ValidateMode {
    /// Check the header and the file's integrity (PNG checksums, JPEG
    /// segments; other formats are decoded).
    Structure,
    /// Decode the whole image at upload.
    Full,
    /// Read the header only (format, dimensions).
    Header,
}

/// Settings of `pipeline serve`; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PIPELINE_LISTEN", default_value = "127.0.0.1:4555")]
    pub listen: String,
    /// Broker: memory://, amqp://, amqps://
    #[arg(long, env = "PIPELINE_BROKER_URL", default_value = "memory://")]
    pub broker_url: String,
    /// Archive database: sqlite://, postgres://, mysql:// (or memory://).
    #[arg(
        long,
        env = "PIPELINE_DATABASE_URL",
        default_value = backends::DEFAULT_DATABASE_URL
    )]
    pub database_url: String,
    /// Result store: memory://, redis://
    #[arg(long, env = "PIPELINE_RESULTS_URL", default_value = "memory://")]
    pub results_url: String,
    /// Prefix of every queue, key and table this system creates.
    #[arg(long, env = "PIPELINE_NAMESPACE", default_value = "pipeline")]
    pub namespace: String,
    /// Transform spec used when an upload gives none.
    #[arg(long, env = "PIPELINE_DEFAULT_TRANSFORM", default_value = "stamp")]
    pub default_transform: String,
    /// Largest upload in bytes.
    #[arg(long, env = "PIPELINE_MAX_UPLOAD_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Where files above the inline limit go (claim check): `archive` (the
    /// database's blob table), `file:///path`, `s3://bucket/prefix` (AWS_*
    /// variables), `memory://` (one process).
    #[arg(long, env = "PIPELINE_BLOB_URL", default_value = backends::ARCHIVE_BLOBS)]
    pub blob_url: String,
    /// Files (originals, results) above this many bytes travel by reference
    /// through the blob store instead of inside messages.
    #[arg(long, env = "PIPELINE_INLINE_MAX", default_value_t = pipeline_core::blob::DEFAULT_INLINE_MAX)]
    pub inline_max: usize,
    /// Largest image in pixels (width x height), checked from the header.
    #[arg(long, env = "PIPELINE_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Largest width or height in pixels.
    #[arg(long, env = "PIPELINE_MAX_DIMENSION", default_value_t = 16_384)]
    pub max_dimension: u32,
    /// Jobs accepted and not finished, at most; beyond it uploads get 503.
    #[arg(long, env = "PIPELINE_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// How uploads are checked.
    #[arg(
        long,
        env = "PIPELINE_VALIDATE",
        value_enum,
        default_value = "structure"
    )]
    pub validate: ValidateMode,
    /// Transforms at once in a transformer (default: the number of cores).
    #[arg(long, env = "PIPELINE_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Seconds a result stays in the result store before GET falls back to the archive.
    #[arg(long, env = "PIPELINE_RESULT_TTL", default_value_t = 3600)]
    pub result_ttl: u64,
    /// Deliveries of one message before it is dead-lettered.
    #[arg(long, env = "PIPELINE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Records saved per archive transaction, at most.
    #[arg(long, env = "PIPELINE_BATCH", default_value_t = 64)]
    pub batch: usize,
    /// Seconds to finish accepted work at shutdown.
    #[arg(long, env = "PIPELINE_DRAIN_TIMEOUT", default_value_t = 60)]
    pub drain_timeout: u64,
    /// Log as JSON lines.
    #[arg(long, env = "PIPELINE_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// For worker processes (no API): serve `/healthz` and `/readyz` on
    /// this address (broker and archive readiness).
    #[arg(long, env = "PIPELINE_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
}

/// The roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// HTTP API with its results consumer.
    pub api: bool,
    /// Transformer workers.
    pub transformer: bool,
    /// Archive writer.
    pub save2db: bool,
    /// Activity log writer.
    pub activity: bool,
}

impl Roles {
    /// Everything, as `pipeline serve` runs.
    pub const ALL: Roles = Roles {
        api: true,
        transformer: true,
        save2db: true,
        activity: true,
    };
    /// Only the API (`pipeline-api`).
    pub const API: Roles = Roles {
        api: true,
        transformer: false,
        save2db: false,
        activity: false,
    };
    /// Only transformers (`pipeline-transformer`).
    pub const TRANSFORMER: Roles = Roles {
        api: false,
        transformer: true,
        save2db: false,
        activity: false,
    };
    /// Only the archive writer (`pipeline-save2db`).
    pub const SAVE2DB: Roles = Roles {
        api: false,
        transformer: false,
        save2db: true,
        activity: false,
    };
    /// Only the activity log (`pipeline-activity`).
    pub const ACTIVITY: Roles = Roles {
        api: false,
        transformer: false,
        save2db: false,
        activity: true,
    };

    fn name(self) -> &'static str {
        match (self.api, self.transformer, self.save2db, self.activity) {
            (true, true, true, true) => "all",
            (true, false, false, false) => "api",
            (false, true, false, false) => "transformer",
            (false, false, true, false) => "save2db",
            (false, false, false, true) => "activity",
            _ => "mixed",
        }
    }
}

/// Run `roles` until Ctrl-C or SIGTERM, then stop without losing accepted work.
pub async fn run(args: ServeArgs, roles: Roles) -> Result<(), Error> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing accepted work");
        let _ = tx.send(true);
    });
    run_until(args, roles, rx, |addr| {
        if let Some(addr) = addr {
            println!("pipeline listening on http://{addr}");
        } else {
            println!("pipeline worker running");
        }
    })
    .await
}

/// Run `roles` until `stop` turns true; `on_start` is told the bound
/// address (for a process with the API) once everything runs.
pub async fn run_until(
    args: ServeArgs,
    roles: Roles,
    mut stop: watch::Receiver<bool>,
    on_start: impl FnOnce(Option<SocketAddr>),
) -> Result<(), Error> {
    let connection_name = format!("{}-{}-{}", args.namespace, roles.name(), std::process::id());
    let broker = backends::broker(
        &args.broker_url,
        &args.namespace,
        &connection_name,
        Duration::from_secs(args.drain_timeout),
    )
    .await?;
    broker
        .declare(&services::topology(args.max_attempts))
        .await?;
    // The transformer reads and writes large files in the blob store: when
    // that is the archive's table, it connects to the database too.
    let needs_archive = roles.api
        || roles.save2db
        || roles.activity
        || (roles.transformer && backends::blobs_in_archive(&args.blob_url));
    let archive = if needs_archive {
        Some(backends::archive(&args.database_url, &args.namespace).await?)
    } else {
        None
    };
    // An archive message carries the original and the result inline up to
    // the limit each: it must fit the broker.
    if let Some(max) = broker.capabilities().max_message_bytes {
        let worst = args
            .inline_max
            .saturating_mul(2)
            .saturating_add(1024 * 1024);
        if worst > max {
            return Err(Error::Config(format!(
                "PIPELINE_INLINE_MAX={} lets a message reach {worst} bytes (original + result + 1 MiB of headers), above the broker's limit of {max}; lower it (default {})",
                args.inline_max,
                pipeline_core::blob::DEFAULT_INLINE_MAX
            )));
        }
    }
    let claim = if roles.api || roles.transformer {
        let store = backends::blob_store(&args.blob_url, archive.as_ref()).await?;
        Some(ClaimCheck::new(store, args.inline_max.max(1)))
    } else {
        None
    };

    let registry = Arc::new(TransformRegistry::with_builtins());
    let limits = ImageLimits {
        max_width: args.max_dimension,
        max_height: args.max_dimension,
        max_pixels: args.max_pixels,
        ..ImageLimits::default()
    };
    let ttl = Duration::from_secs(args.result_ttl);
    // Workers stop on `workers_stop` (a persistent broker keeps what is
    // queued) or when the broker closes (the memory broker drains first).
    let (workers_stop, workers_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = workers_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut workers = Vec::new();

    if roles.transformer {
        let pool = match args.concurrency {
            Some(n) => BlockingPool::new(n),
            None => BlockingPool::per_core(),
        };
        let transformer = Transformer::new(
            broker.clone(),
            Processor::new(registry.clone(), limits.clone()),
            pool.clone(),
            TransformerConfig {
                worker_id: services::worker_id("transformer"),
                default_spec: registry.parse(&args.default_transform)?,
                prefetch: pool.size() * 2,
                retry: pipeline_core::Backoff::default(),
            },
        );
        let transformer = match &claim {
            Some(c) => transformer.with_claim_check(c.clone()),
            None => transformer,
        };
        workers.push(tokio::spawn(transformer.run(stopped())));
    }
    if let Some(a) = &archive {
        if roles.save2db {
            workers.push(tokio::spawn(
                Save2Db::new(broker.clone(), a.images.clone(), args.batch).run(stopped()),
            ));
        }
        if roles.activity {
            workers.push(tokio::spawn(
                ActivityRecorder::new(broker.clone(), a.activity.clone(), args.batch)
                    .run(stopped()),
            ));
        }
    }

    let mut api = None;
    if let (true, Some(a)) = (roles.api, &archive) {
        let results = backends::results(&args.results_url, &args.namespace).await?;
        let submitter = Submitter::new(
            broker.clone(),
            results.clone(),
            registry.clone(),
            // Uploads are checked on their own pool so they never queue
            // behind long transforms.
            BlockingPool::per_core(),
            SubmitConfig {
                default_spec: args.default_transform.clone(),
                validation: match args.validate {
                    ValidateMode::Structure => Validation::Structure,
                    ValidateMode::Full => Validation::Full,
                    ValidateMode::Header => Validation::Header,
                },
                limits: limits.clone(),
                result_ttl: ttl,
                max_in_flight: args.max_in_flight,
                ..SubmitConfig::default()
            },
        )
        .await?;
        let submitter = match &claim {
            Some(c) => submitter.with_claim_check(c.clone()),
            None => submitter,
        };
        workers.push(tokio::spawn(
            ResultsConsumer::new(broker.clone(), results.clone(), ttl, 64).run(stopped()),
        ));
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", args.listen)))?;
        let app = pipeline_http::router(ApiState {
            submitter,
            results,
            archive: a.images.clone(),
            broker: broker.clone(),
            config: ApiConfig {
                max_upload_bytes: args.max_upload_bytes,
                ..ApiConfig::default()
            },
        });
        api = Some((listener, app));
    }

    let addr = match &api {
        Some((listener, _)) => Some(
            listener
                .local_addr()
                .map_err(|e| Error::Config(format!("cannot read the bound address: {e}")))?,
        ),
        None => None,
    };
    if let (None, Some(health)) = (&api, &args.health_listen) {
        let listener = tokio::net::TcpListener::bind(health)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {health}: {e}")))?;
        let archive_ready = archive.as_ref().map(|a| a.images.clone());
        let blobs_ready = claim.as_ref().map(|c| c.store().clone());
        let app = pipeline_http::health_router(broker.clone(), archive_ready, blobs_ready);
        tracing::info!(addr = %health, "health endpoints up");
        let mut health_stop = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = health_stop.wait_for(|s| *s).await;
            });
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "health endpoint failed");
            }
        });
    }
    on_start(addr);
    tracing::info!(roles = roles.name(), ?addr, broker = %redact(&args.broker_url), namespace = %args.namespace, "running");

    if let Some((listener, app)) = api {
        let mut http_stop = stop.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        });
        // Open event streams and long polls never end by themselves: give
        // requests in progress a bounded time after the stop.
        let grace = async {
            let _ = stop.clone().wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::select! {
            r = server => r.map_err(|e| Error::Unavailable(format!("HTTP server failed: {e}")))?,
            () = grace => tracing::warn!("requests still open after 10 s; closing them"),
        }
    }
    let _ = stop.wait_for(|s| *s).await;

    // No more uploads. A persistent broker keeps what is queued: stop
    // pulling, finish (and publish, and ack) what is in hand, then close.
    // The memory broker would lose its queues: it drains them while the
    // workers still run, then closes, which ends them.
    let persistent = broker.capabilities().persistent;
    if persistent {
        let _ = workers_stop.send(true);
    } else {
        broker.close().await?;
    }
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a worker stopped with an error"),
            Err(e) => tracing::error!(error = %e, "a worker task failed"),
        }
    }
    if persistent {
        broker.close().await?;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            futures::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
