//! Connecting the backends and starting the roles of a [`PipelineBuilder`].

use std::sync::Arc;

use pipeline_core::connect::{Archive, Backends};
use pipeline_core::services::{
    self, ActivityRecorder, ResultsConsumer, Save2Db, SubmitConfig, Submitter, Transformer,
    TransformerConfig, default_presets,
};
use pipeline_core::transform::{BlockingPool, Processor};
use pipeline_core::{BlobStore, Broker, ClaimCheck, Error, ResultStore, TransformRegistry};
use pipeline_http::{ApiConfig, ApiState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builder::PipelineBuilder;
use crate::running::{Checks, Running, Servers};
use crate::settings::ARCHIVE_BLOBS;

/// Whether the blob store named by `url` is the archive's own.
pub(crate) fn blobs_in_archive(url: &str) -> bool {
    url.is_empty() || url == ARCHIVE_BLOBS
}

/// Pauses between connection attempts at start.
const CONNECT_BACKOFF: pipeline_core::Backoff = pipeline_core::Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(5),
)
.with_jitter();

/// `connect()`, tried again while it fails with a retryable error (the
/// backend is unreachable) for up to `within`; any other error at once.
async fn patiently<T, F, Fut>(
    what: &str,
    within: std::time::Duration,
    connect: F,
) -> Result<T, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut backoff = CONNECT_BACKOFF.start();
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                let pause = backoff
                    .next_delay()
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tracing::warn!(error = %e, ?pause, "{what} is unreachable; trying again");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) async fn start(b: PipelineBuilder) -> Result<Running, Error> {
    let backends = b.backends.clone().unwrap_or_else(crate::backends::compiled);
    let options = b.connect_options();
    let (roles, settings) = (b.roles, &b.settings);

    let broker = match &b.broker {
        Some(broker) => broker.clone(),
        None => {
            patiently("the broker", settings.connect_timeout, || {
                backends.connect_broker(&b.urls.broker, &options)
            })
            .await?
        }
    };
    broker
        .declare(&services::topology(settings.max_attempts))
        .await?;
    check_inline_limit(broker.as_ref(), settings.inline_max)?;

    // The transformer reads and writes large files in the blob store: when
    // that is the archive's table, it connects to the database too.
    let blobs_from_archive = b.blobs.is_none() && blobs_in_archive(&b.urls.blobs);
    let needs_archive =
        roles.api || roles.save2db || roles.activity || (roles.transformer && blobs_from_archive);
    let archive = match (&b.archive, needs_archive) {
        (Some(a), _) => Some(a.clone()),
        (None, true) => Some(
            patiently("the archive", settings.connect_timeout, || {
                backends.connect_archive(&b.urls.database, &options)
            })
            .await?,
        ),
        (None, false) => None,
    };
    let claim = if roles.api || roles.transformer {
        let store = blob_store(&b, &backends, archive.as_ref()).await?;
        Some(ClaimCheck::new(store, settings.inline_max.max(1)))
    } else {
        None
    };
    let registry = Arc::new(
        b.registry
            .clone()
            .unwrap_or_else(TransformRegistry::with_builtins),
    );

    // Workers stop on `workers_stop` (a persistent broker keeps what is
    // queued) or when the broker closes (the memory broker drains first).
    let (workers_stop, workers_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = workers_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut workers: Vec<JoinHandle<Result<(), Error>>> = Vec::new();

    if roles.transformer {
        let pool = match settings.concurrency {
            Some(n) => BlockingPool::new(n),
            None => BlockingPool::per_core(),
        };
        let transformer = Transformer::new(
            broker.clone(),
            Processor::new(registry.clone(), settings.limits.clone()),
            pool.clone(),
            TransformerConfig {
                worker_id: if settings.worker_id_with_host {
                    services::worker_id_with_host("transformer")
                } else {
                    services::worker_id("transformer")
                },
                default_spec: registry.parse(&settings.default_transform)?,
                prefetch: pool.size() * 2,
                retry: settings.retry,
                max_attempts: settings.max_attempts,
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
            let save = Save2Db::new(broker.clone(), a.images.clone(), settings.batch)
                .with_max_attempts(settings.max_attempts)
                .with_retry(settings.retry);
            workers.push(tokio::spawn(save.run(stopped())));
        }
        if roles.activity {
            let recorder =
                ActivityRecorder::new(broker.clone(), a.activity.clone(), settings.batch);
            workers.push(tokio::spawn(recorder.run(stopped())));
        }
    }

    let mut api = None;
    let mut results_store = None;
    if let (true, Some(a)) = (roles.api, &archive) {
        let results: Arc<dyn ResultStore> = match &b.results {
            Some(r) => r.clone(),
            None => {
                patiently("the result store", settings.connect_timeout, || {
                    backends.connect_results(&b.urls.results, &options)
                })
                .await?
            }
        };
        let mut presets = default_presets();
        presets.extend(settings.presets.clone());
        let submitter = Submitter::new(
            broker.clone(),
            results.clone(),
            registry.clone(),
            // Uploads are checked on their own pool so they never queue
            // behind long transforms.
            BlockingPool::per_core(),
            SubmitConfig {
                default_spec: settings.default_transform.clone(),
                presets,
                validation: settings.validation,
                limits: settings.limits.clone(),
                result_ttl: settings.result_ttl,
                max_in_flight: settings.max_in_flight,
                max_in_flight_per_tenant: settings.tenant_max_in_flight,
            },
        )
        .await?;
        let submitter = match &claim {
            Some(c) => submitter.with_claim_check(c.clone()),
            None => submitter,
        };
        let consumer =
            ResultsConsumer::new(broker.clone(), results.clone(), settings.result_ttl, 64)
                .with_max_attempts(settings.max_attempts)
                .with_retry(settings.retry);
        workers.push(tokio::spawn(consumer.run(stopped())));
        api = Some(ApiState {
            submitter,
            results: results.clone(),
            archive: a.images.clone(),
            activity: a.activity.clone(),
            broker: broker.clone(),
            // Set once the listener is bound (the default mode depends on
            // its address).
            auth: pipeline_http::Auth::none(),
            config: ApiConfig {
                max_upload_bytes: settings.max_upload_bytes,
                web_dir: settings.web_dir.clone(),
                body_timeout: settings.body_timeout,
                max_waits_per_tenant: settings.max_waits_per_tenant,
                metrics: settings.metrics.clone(),
                ..ApiConfig::default()
            },
        });
        results_store = Some(results);
    }

    let checks = Checks {
        broker: broker.clone(),
        archive: archive.as_ref().map(|a| a.images.clone()),
        results: results_store,
        blobs: claim.as_ref().map(|c| c.store().clone()),
    };
    let keys = archive.as_ref().map(|a| a.keys.clone());
    let servers = Servers::bind(&b, api.clone(), &checks, keys).await?;
    let api = servers.api_state().or(api);
    tracing::info!(
        roles = roles.name(),
        addr = ?servers.api_addr(),
        auth = servers.auth_mode().unwrap_or("-"),
        namespace = %settings.namespace,
        "running"
    );
    Ok(Running::launch(
        broker,
        workers,
        workers_stop,
        servers,
        api,
        checks,
        settings.request_grace,
    ))
}

/// Room for an archive message's headers, spec and info beside its two
/// images (they take a few KiB).
const ENVELOPE_HEADROOM: usize = 64 * 1024;

/// An archive message carries the original and the result inline up to
/// the limit each: it must fit the broker.
fn check_inline_limit(broker: &dyn Broker, inline_max: usize) -> Result<(), Error> {
    if let Some(max) = broker.capabilities().max_message_bytes {
        let worst = inline_max
            .saturating_mul(2)
            .saturating_add(ENVELOPE_HEADROOM);
        if worst > max {
            return Err(Error::Config(format!(
                "PIPELINE_INLINE_MAX={inline_max} lets a message reach {worst} bytes (original + result + 64 KiB of headers and info), above the broker's limit of {max}; lower it (default {})",
                pipeline_core::blob::DEFAULT_INLINE_MAX
            )));
        }
    }
    Ok(())
}

/// The claim-check store: the one given, the archive's own table, or a URL.
async fn blob_store(
    b: &PipelineBuilder,
    backends: &Backends,
    archive: Option<&Archive>,
) -> Result<Arc<dyn BlobStore>, Error> {
    if let Some(blobs) = &b.blobs {
        return Ok(blobs.clone());
    }
    if blobs_in_archive(&b.urls.blobs) {
        return archive.map(|a| a.blobs.clone()).ok_or_else(|| {
            Error::Config("the blob store is the archive, but no archive is configured".into())
        });
    }
    backends
        .connect_blobs(&b.urls.blobs, &b.connect_options())
        .await
        .map_err(|e| match e {
            Error::Config(m) if m.starts_with("unsupported") => Error::Config(format!(
                "{m}, or `{ARCHIVE_BLOBS}` (the archive database's blob table)"
            )),
            other => other,
        })
}
