//! A started pipeline: its addresses, readiness, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use pipeline_core::services::{Accepted, Submitter, Upload};
use pipeline_core::{BlobStore, Broker, Error, ImageStore, JobStatus, ResultStore};
use pipeline_http::ApiState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::builder::PipelineBuilder;
use crate::http_server::{self, Transport};

/// The backends a process depends on, for readiness.
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    pub broker: Arc<dyn Broker>,
    pub archive: Option<Arc<dyn ImageStore>>,
    pub results: Option<Arc<dyn ResultStore>>,
    pub blobs: Option<Arc<dyn BlobStore>>,
}

/// The bound listeners, not yet serving.
pub(crate) struct Servers {
    api: Option<(TcpListener, Router)>,
    health: Option<(TcpListener, Router)>,
    api_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    transport: Transport,
    /// The API's state once its auth is resolved.
    state: Option<ApiState>,
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("cannot read the bound address of {addr}: {e}")))?;
    Ok((listener, bound))
}

impl Servers {
    pub(crate) async fn bind(
        b: &PipelineBuilder,
        api: Option<ApiState>,
        checks: &Checks,
        keys: Option<Arc<dyn pipeline_core::auth::KeyStore>>,
    ) -> Result<Self, Error> {
        let mut servers = Self {
            api: None,
            health: None,
            api_addr: None,
            health_addr: None,
            transport: b.settings.transport,
            state: None,
        };
        if let (Some(addr), Some(mut state)) = (&b.listen, api) {
            let (listener, bound) = bind(addr).await?;
            state.auth =
                crate::auth::resolve(&b.settings.auth, b.settings.tenant_rates, bound, keys)?;
            servers.state = Some(state.clone());
            servers.api = Some((listener, pipeline_http::router(state)));
            servers.api_addr = Some(bound);
        }
        if let Some(addr) = &b.health_listen {
            let (listener, bound) = bind(addr).await?;
            let router = pipeline_http::health_router(
                checks.broker.clone(),
                checks.archive.clone(),
                checks.blobs.clone(),
                b.settings.metrics.clone(),
            );
            tracing::info!(addr = %bound, "health endpoints up");
            servers.health = Some((listener, router));
            servers.health_addr = Some(bound);
        }
        Ok(servers)
    }

    pub(crate) fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The API's state as served (auth resolved), when it listens.
    pub(crate) fn api_state(&self) -> Option<ApiState> {
        self.state.clone()
    }

    /// The API's auth mode (`none`, `trusted-header`, `keys`), when it
    /// listens.
    pub(crate) fn auth_mode(&self) -> Option<&'static str> {
        self.state.as_ref().map(|s| s.auth.mode().name())
    }
}

/// A running pipeline. Stop it with [`shutdown`](Self::shutdown) (or
/// [`run_until_signal`](Self::run_until_signal)): uploads stop, accepted
/// work finishes within the drain timeout, connections close.
#[derive(Debug)]
pub struct Running {
    api_addr: Option<SocketAddr>,
    auth_mode: Option<&'static str>,
    health_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
    api: Option<ApiState>,
    checks: Checks,
}

/// Stops a [`Running`] pipeline from anywhere; cheap to clone.
#[derive(Debug, Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Ask the pipeline to stop (idempotent).
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Running {
    pub(crate) fn launch(
        broker: Arc<dyn Broker>,
        workers: Vec<JoinHandle<Result<(), Error>>>,
        workers_stop: watch::Sender<bool>,
        servers: Servers,
        api: Option<ApiState>,
        checks: Checks,
        grace: Duration,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (api_addr, health_addr) = (servers.api_addr, servers.health_addr);
        let auth_mode = servers.auth_mode();
        let task = tokio::spawn(lifecycle(
            broker,
            workers,
            workers_stop,
            servers,
            stop_rx,
            grace,
        ));
        Self {
            api_addr,
            auth_mode,
            health_addr,
            stop,
            task,
            api,
            checks,
        }
    }

    /// Where the HTTP API listens, if it was given an address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// How the API authenticates (`none`, `trusted-header`, `keys`), when
    /// it listens.
    pub fn auth_mode(&self) -> Option<&'static str> {
        self.auth_mode
    }

    /// Where `/healthz` and `/readyz` listen, if asked for.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The API's router (with the API role), to serve yourself or nest in
    /// your own axum application.
    pub fn router(&self) -> Option<Router> {
        self.api.clone().map(pipeline_http::router)
    }

    /// The submitter (with the API role): validate and submit uploads
    /// without going through HTTP.
    pub fn submitter(&self) -> Option<&Submitter> {
        self.api.as_ref().map(|a| &a.submitter)
    }

    /// Validate and submit one file for `tenant`, as an upload over HTTP
    /// would be (API role): `spec` (or the default transform) applies.
    pub async fn submit(
        &self,
        tenant: &str,
        data: Bytes,
        spec: Option<&str>,
    ) -> Result<Accepted, Error> {
        let submitter = self
            .submitter()
            .ok_or_else(|| Error::Config("submitting needs the API role".into()))?;
        let spec = submitter.resolve_spec(spec, None)?;
        submitter.in_flight().check_room(tenant, 1)?;
        let probe = submitter.validate(data.clone()).await?;
        let upload = Upload {
            tenant: tenant.to_string(),
            filename: None,
            data,
            trace: None,
        };
        submitter.submit(upload, probe, &spec).await
    }

    /// Wait up to `timeout` for job `id` to finish (API role); its status
    /// then (still pending if the time ran out).
    pub async fn finished(&self, id: Uuid, timeout: Duration) -> Result<JobStatus, Error> {
        let results = self
            .results()
            .ok_or_else(|| Error::Config("waiting for results needs the API role".into()))?;
        results
            .wait(id, timeout)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id}")))
    }

    /// The result store (with the API role).
    pub fn results(&self) -> Option<&Arc<dyn ResultStore>> {
        self.checks.results.as_ref()
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.checks.broker
    }

    /// `Ok` when every backend this process uses answers.
    pub async fn ready(&self) -> Result<(), Error> {
        let c = &self.checks;
        c.broker.ready().await?;
        if let Some(a) = &c.archive {
            a.ready().await?;
        }
        if let Some(r) = &c.results {
            r.ready().await?;
        }
        if let Some(b) = &c.blobs {
            b.ready().await?;
        }
        Ok(())
    }

    /// A handle that stops this pipeline.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Stop and wait until accepted work is finished and connections are closed.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop.send_replace(true);
        self.wait().await
    }

    /// Wait until the pipeline stops (by a [`StopHandle`], or a failure of
    /// its HTTP server).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::Closed(format!("the pipeline task failed: {e}")))?
    }

    /// Run until Ctrl-C or SIGTERM, then shut down gracefully.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let stop = self.stop_handle();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; finishing accepted work");
            stop.stop();
        });
        self.wait().await
    }
}

/// Serve until the stop, then stop pulling, finish, close.
async fn lifecycle(
    broker: Arc<dyn Broker>,
    workers: Vec<JoinHandle<Result<(), Error>>>,
    workers_stop: watch::Sender<bool>,
    servers: Servers,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), Error> {
    let stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let transport = servers.transport;
    if let Some((listener, router)) = servers.health {
        tokio::spawn(http_server::serve(
            listener,
            router,
            transport,
            stopped(&stop),
        ));
    }
    if let Some((listener, router)) = servers.api {
        let server = http_server::serve(listener, router, transport, stopped(&stop));
        // Open event streams and long polls never end by themselves: give
        // requests in progress a bounded time after the stop.
        let deadline = {
            let stop = stopped(&stop);
            async move {
                stop.await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::select! {
            () = server => {}
            () = deadline => tracing::warn!(?grace, "requests still open after the grace period; closing them"),
        }
    }
    stopped(&stop).await;

    // No more uploads. A persistent broker keeps what is queued: stop
    // pulling, finish (and publish, and ack) what is in hand, then close.
    // The memory broker would lose its queues: it drains them while the
    // workers still run, then closes, which ends them.
    let persistent = broker.capabilities().persistent;
    if persistent {
        workers_stop.send_replace(true);
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

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
