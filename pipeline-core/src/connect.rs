//! Backends by URL scheme: each adapter registers the schemes it serves in
//! a [`Backends`] table, and a deployment connects from URLs through it.
//!
//! The in-memory backends (`memory://`) and the file blob store
//! (`file:///path`) are always there. A scheme a deployment knows of but
//! was built without is refused with the Cargo feature to enable.
//!
//! ```
//! use pipeline_core::connect::{Backends, ConnectOptions};
//! # tokio_test_block_on(async {
//! let backends = Backends::with_memory();
//! let options = ConnectOptions::new("demo");
//! let broker = backends.connect_broker("memory://?max_depth=64", &options).await?;
//! assert!(!broker.capabilities().persistent);
//! let err = backends.connect_broker("amqp://localhost", &options).await.unwrap_err();
//! assert!(err.to_string().contains("amqp://"), "{err}");
//! # Ok::<(), pipeline_core::Error>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::auth::KeyStore;
use crate::blob::{BlobStore, FileBlobStore};
use crate::broker::Broker;
use crate::error::{Error, Result};
use crate::memory::{MemoryArchive, MemoryBlobStore, MemoryBroker, MemoryResultStore};
use crate::results::ResultStore;
use crate::store::{ActivityLog, ImageStore};
use crate::urls::{redact, scheme_of};

/// What every connection is given besides its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Prefix of every queue, key and table the deployment creates.
    pub namespace: String,
    /// How this process shows on the server (RabbitMQ connection name).
    pub client_name: String,
    /// How long a non-persistent broker's `close` waits for its queues to
    /// drain.
    pub drain_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `namespace`, named after it, draining for 60 s.
    pub fn new(namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        Self {
            client_name: format!("{namespace}-{}", std::process::id()),
            namespace,
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// The archive of a deployment: archived jobs, the activity log and the
/// archive's own blob store (the default claim-check store).
#[derive(Debug, Clone)]
pub struct Archive {
    /// Archived jobs.
    pub images: Arc<dyn ImageStore>,
    /// The activity log.
    pub activity: Arc<dyn ActivityLog>,
    /// The archive's blob store.
    pub blobs: Arc<dyn BlobStore>,
    /// API keys.
    pub keys: Arc<dyn KeyStore>,
}

impl Archive {
    /// One value that is all four (an SQL database, the memory archive).
    pub fn of<T>(store: Arc<T>) -> Self
    where
        T: ImageStore + ActivityLog + BlobStore + KeyStore + 'static,
    {
        Self {
            images: store.clone(),
            activity: store.clone(),
            blobs: store.clone(),
            keys: store,
        }
    }
}

/// The kinds of backend a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A [`Broker`] (`PIPELINE_BROKER_URL`).
    Broker,
    /// A [`ResultStore`] (`PIPELINE_RESULTS_URL`).
    Results,
    /// An [`Archive`] (`PIPELINE_DATABASE_URL`).
    Archive,
    /// A [`BlobStore`] (`PIPELINE_BLOB_URL`).
    Blobs,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Results => "results",
            Self::Archive => "database",
            Self::Blobs => "blob store",
        }
    }
}

type Connect<T> =
    Arc<dyn Fn(String, ConnectOptions) -> BoxFuture<'static, Result<T>> + Send + Sync>;

/// Opens a broker from a URL.
pub type BrokerFactory = Connect<Arc<dyn Broker>>;
/// Opens a result store from a URL.
pub type ResultsFactory = Connect<Arc<dyn ResultStore>>;
/// Opens an archive from a URL.
pub type ArchiveFactory = Connect<Archive>;
/// Opens a blob store from a URL.
pub type BlobsFactory = Connect<Arc<dyn BlobStore>>;

/// Backends by URL scheme.
#[derive(Clone, Default)]
pub struct Backends {
    brokers: BTreeMap<String, BrokerFactory>,
    results: BTreeMap<String, ResultsFactory>,
    archives: BTreeMap<String, ArchiveFactory>,
    blobs: BTreeMap<String, BlobsFactory>,
    /// Schemes known to exist but not compiled in, with what enables them.
    absent: BTreeMap<(Kind, String), String>,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("brokers", &self.brokers.keys().collect::<Vec<_>>())
            .field("results", &self.results.keys().collect::<Vec<_>>())
            .field("archives", &self.archives.keys().collect::<Vec<_>>())
            .field("blobs", &self.blobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Box a `connect` function into a factory.
fn factory<T, F, Fut>(connect: F) -> Connect<T>
where
    F: Fn(String, ConnectOptions) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    Arc::new(move |url, options| Box::pin(connect(url, options)))
}

impl Backends {
    /// No scheme at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// `memory://` for every kind and `file:///path` for blobs.
    pub fn with_memory() -> Self {
        let mut b = Self::new();
        b.broker("memory", |url, options: ConnectOptions| async move {
            let broker = MemoryBroker::from_url(&url, options.drain_timeout)?;
            Ok(Arc::new(broker) as Arc<dyn Broker>)
        });
        b.results("memory", |url, _| async move {
            no_options(&url)?;
            Ok(Arc::new(MemoryResultStore::new()) as Arc<dyn ResultStore>)
        });
        b.archive("memory", |url, _| async move {
            no_options(&url)?;
            let archive = Arc::new(MemoryArchive::new());
            Ok(Archive {
                images: archive.clone(),
                activity: archive.clone(),
                blobs: Arc::new(MemoryBlobStore::new()),
                keys: archive,
            })
        });
        b.blobs("memory", |url, _| async move {
            no_options(&url)?;
            Ok(Arc::new(MemoryBlobStore::new()) as Arc<dyn BlobStore>)
        });
        b.blobs("file", |url, _| async move {
            Ok(Arc::new(FileBlobStore::from_url(&url).await?) as Arc<dyn BlobStore>)
        });
        b
    }

    /// Serve broker URLs of `scheme` with `connect`.
    pub fn broker<F, Fut>(&mut self, scheme: &str, connect: F) -> &mut Self
    where
        F: Fn(String, ConnectOptions) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn Broker>>> + Send + 'static,
    {
        self.brokers.insert(scheme.to_string(), factory(connect));
        self
    }

    /// Serve result-store URLs of `scheme` with `connect`.
    pub fn results<F, Fut>(&mut self, scheme: &str, connect: F) -> &mut Self
    where
        F: Fn(String, ConnectOptions) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn ResultStore>>> + Send + 'static,
    {
        self.results.insert(scheme.to_string(), factory(connect));
        self
    }

    /// Serve database URLs of `scheme` with `connect`.
    pub fn archive<F, Fut>(&mut self, scheme: &str, connect: F) -> &mut Self
    where
        F: Fn(String, ConnectOptions) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Archive>> + Send + 'static,
    {
        self.archives.insert(scheme.to_string(), factory(connect));
        self
    }

    /// Serve blob-store URLs of `scheme` with `connect`.
    pub fn blobs<F, Fut>(&mut self, scheme: &str, connect: F) -> &mut Self
    where
        F: Fn(String, ConnectOptions) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn BlobStore>>> + Send + 'static,
    {
        self.blobs.insert(scheme.to_string(), factory(connect));
        self
    }

    /// Record that `scheme` for `kind` exists but needs `enable` (for
    /// example "the `rabbitmq` feature of `pipeline`"): a URL of it is then
    /// refused with that advice. Registered schemes take precedence.
    pub fn absent(&mut self, kind: Kind, scheme: &str, enable: &str) -> &mut Self {
        self.absent
            .insert((kind, scheme.to_string()), enable.to_string());
        self
    }

    /// The schemes served for `kind`.
    pub fn schemes(&self, kind: Kind) -> Vec<&str> {
        let keys: Vec<&String> = match kind {
            Kind::Broker => self.brokers.keys().collect(),
            Kind::Results => self.results.keys().collect(),
            Kind::Archive => self.archives.keys().collect(),
            Kind::Blobs => self.blobs.keys().collect(),
        };
        keys.into_iter().map(String::as_str).collect()
    }

    /// Connect the broker named by `url`.
    pub async fn connect_broker(
        &self,
        url: &str,
        options: &ConnectOptions,
    ) -> Result<Arc<dyn Broker>> {
        let f = self.pick(&self.brokers, Kind::Broker, url)?;
        f(url.to_string(), options.clone()).await
    }

    /// Connect the result store named by `url`.
    pub async fn connect_results(
        &self,
        url: &str,
        options: &ConnectOptions,
    ) -> Result<Arc<dyn ResultStore>> {
        let f = self.pick(&self.results, Kind::Results, url)?;
        f(url.to_string(), options.clone()).await
    }

    /// Connect the archive named by `url`.
    pub async fn connect_archive(&self, url: &str, options: &ConnectOptions) -> Result<Archive> {
        let f = self.pick(&self.archives, Kind::Archive, url)?;
        f(url.to_string(), options.clone()).await
    }

    /// Connect the blob store named by `url`.
    pub async fn connect_blobs(
        &self,
        url: &str,
        options: &ConnectOptions,
    ) -> Result<Arc<dyn BlobStore>> {
        let f = self.pick(&self.blobs, Kind::Blobs, url)?;
        f(url.to_string(), options.clone()).await
    }

    fn pick<'a, T>(
        &self,
        table: &'a BTreeMap<String, Connect<T>>,
        kind: Kind,
        url: &str,
    ) -> Result<&'a Connect<T>> {
        let scheme = scheme_of(url).unwrap_or_default();
        if let Some(f) = table.get(&scheme) {
            return Ok(f);
        }
        let shown = redact(url);
        if let Some(enable) = self.absent.get(&(kind, scheme.clone())) {
            return Err(Error::Config(format!(
                "{} URL {shown}: {scheme}:// is not compiled into this program; build it with {enable}",
                kind.noun()
            )));
        }
        let known: Vec<String> = table.keys().map(|s| format!("{s}://")).collect();
        Err(Error::Config(format!(
            "unsupported {} URL {shown}; supported schemes: {}",
            kind.noun(),
            known.join(", ")
        )))
    }
}

/// Refuse query options on a backend that takes none.
fn no_options(url: &str) -> Result<()> {
    if url.contains('?') {
        let u = crate::urls::BackendUrl::parse(url)?;
        u.reject_remaining(&[])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn memory_backends_and_clear_refusals() {
        let mut b = Backends::with_memory();
        b.absent(Kind::Broker, "amqp", "the `rabbitmq` feature");
        let o = ConnectOptions::new("t");
        b.connect_broker("memory://", &o).await.unwrap();
        b.connect_results("memory://", &o).await.unwrap();
        b.connect_archive("memory://", &o).await.unwrap();
        b.connect_blobs("memory://", &o).await.unwrap();
        let e = b
            .connect_broker("amqp://u:secret@h", &o)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`rabbitmq` feature") && !e.contains("secret"),
            "{e}"
        );
        let e = b
            .connect_broker("kafka://h", &o)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("supported schemes: memory://"), "{e}");
        let e = b
            .connect_results("memory://?x=1", &o)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option"), "{e}");
        assert_eq!(b.schemes(Kind::Blobs), vec!["file", "memory"]);
    }
}
