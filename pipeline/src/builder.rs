//! [`PipelineBuilder`]: a running pipeline from URLs or from backend values,
//! with the caller's transforms and presets.

use std::sync::Arc;

use pipeline_core::connect::{Archive, Backends, ConnectOptions};
use pipeline_core::{BlobStore, Broker, Error, ResultStore, TransformRegistry};

use crate::assemble;
use crate::running::Running;
use crate::settings::{Roles, Settings, Urls};

/// Entry point: `Pipeline::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline;

impl Pipeline {
    /// A builder for every role on the embedded defaults (in-memory broker
    /// and results, SQLite archive under `./pipeline-data`), the built-in
    /// transforms, and no HTTP listener.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }
}

/// Assembles a pipeline: which roles run, where the backends are, the
/// transforms and presets, the limits, and the HTTP listeners.
///
/// Every backend is given either as a URL (resolved through
/// [`Backends`], by default [`crate::backends::compiled`]) or as a value.
///
/// ```
/// use pipeline::{Pipeline, Roles, TransformRegistry};
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), pipeline::Error> {
/// let running = Pipeline::builder()
///     .roles(Roles::ALL)
///     .database_url("memory://")
///     .registry(TransformRegistry::with_builtins())
///     .listen("127.0.0.1:0")
///     .start()
///     .await?;
/// let addr = running.addr().expect("the API listens");
/// running.ready().await?;
/// println!("listening on http://{addr}");
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    pub(crate) roles: Roles,
    pub(crate) settings: Settings,
    pub(crate) urls: Urls,
    pub(crate) registry: Option<TransformRegistry>,
    pub(crate) backends: Option<Backends>,
    pub(crate) broker: Option<Arc<dyn Broker>>,
    pub(crate) archive: Option<Archive>,
    pub(crate) results: Option<Arc<dyn ResultStore>>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) listen: Option<String>,
    pub(crate) health_listen: Option<String>,
    pub(crate) client_name: Option<String>,
}

impl Default for PipelineBuilder {
    fn default() -> Self {
        Self {
            roles: Roles::ALL,
            settings: Settings::default(),
            urls: Urls::default(),
            registry: None,
            backends: None,
            broker: None,
            archive: None,
            results: None,
            blobs: None,
            listen: None,
            health_listen: None,
            client_name: None,
        }
    }
}

impl PipelineBuilder {
    /// The roles to run (default: all).
    pub fn roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }

    /// Limits and knobs (default: those of `pipeline serve`).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Change some settings in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    /// All backend URLs at once.
    pub fn urls(mut self, urls: Urls) -> Self {
        self.urls = urls;
        self
    }

    /// The transforms jobs may use (default: the built-ins).
    pub fn registry(mut self, registry: TransformRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Add a named preset (replaces a built-in one of the same name).
    pub fn preset(mut self, name: impl Into<String>, spec: impl Into<String>) -> Self {
        self.settings.presets.insert(name.into(), spec.into());
        self
    }

    /// The scheme table URLs are resolved with (default: the adapters this
    /// crate was built with).
    pub fn backends(mut self, backends: Backends) -> Self {
        self.backends = Some(backends);
        self
    }

    /// Broker URL.
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.urls.broker = url.into();
        self
    }

    /// Archive database URL.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.urls.database = url.into();
        self
    }

    /// Result-store URL.
    pub fn results_url(mut self, url: impl Into<String>) -> Self {
        self.urls.results = url.into();
        self
    }

    /// Claim-check blob-store URL (`archive` for the database's own table).
    pub fn blob_url(mut self, url: impl Into<String>) -> Self {
        self.urls.blobs = url.into();
        self
    }

    /// Use this broker instead of a URL.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Use this archive instead of a URL.
    pub fn archive(mut self, archive: Archive) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Use this result store instead of a URL.
    pub fn results(mut self, results: Arc<dyn ResultStore>) -> Self {
        self.results = Some(results);
        self
    }

    /// Use this claim-check blob store instead of a URL.
    pub fn blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Serve the HTTP API on `addr` (port 0 picks a free port). Without it,
    /// the API role still runs and [`Running::router`] gives its router.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Serve `/healthz` and `/readyz` on `addr` (for worker processes).
    pub fn health_listen(mut self, addr: impl Into<String>) -> Self {
        self.health_listen = Some(addr.into());
        self
    }

    /// How this process shows on the broker (default: namespace, roles, pid).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Connect the backends, declare the queues, start the roles and the
    /// listeners. Every setting is checked before anything runs.
    pub async fn start(self) -> Result<Running, Error> {
        if self.roles.is_empty() {
            return Err(Error::Config("no role to run".into()));
        }
        assemble::start(self).await
    }

    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.settings.namespace.clone());
        options.client_name = self.client_name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}",
                self.settings.namespace,
                self.roles.name(),
                std::process::id()
            )
        });
        options.drain_timeout = self.settings.drain_timeout;
        options
    }
}
