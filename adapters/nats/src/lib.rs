//! # pipeline-nats
//!
//! NATS JetStream through `async-nats`: a [`Broker`], a
//! [`ResultStore`](pipeline_core::ResultStore) on key-value
//! ([`NatsResultStore`]) and a [`BlobStore`](pipeline_core::BlobStore) on
//! the object store ([`NatsBlobStore`]). See `docs/backends/nats.md`.
//!
//! Layout for a namespace `ns`: one stream `ns` with work-queue retention
//! over the subjects `ns.q.>`; queue `q` is the subject `ns.q.<q>` and a
//! durable pull consumer of that name (dots become `-`), its dead letters
//! the queue `q.dead`. Routing is done by the publisher: a message goes to
//! the subject of every queue whose patterns match its routing key, the
//! bindings being kept in each consumer's description (so any process
//! learns them from the server). Retries are JetStream redeliveries (`nak`
//! with a delay), and the attempt is the frame's attempt plus the
//! redeliveries; what happens to a message that is not acked is decided by
//! [`pipeline_core::broker::policy`].

mod admin;
mod blobs;
mod consumer;
mod results;

pub use blobs::NatsBlobStore;
pub use results::NatsResultStore;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use pipeline_core::broker::bindings::{Bindings, fan_out, unroutable};
use pipeline_core::broker::{
    Broker, Capabilities, DeliveryStream, QueueSpec, QueueStats, Subscription, dead_letter_queue,
};
use pipeline_core::urls::BackendUrl;
use pipeline_core::{Envelope, Error, Result, wire};
use serde::{Deserialize, Serialize};

pub use pipeline_core::urls::redact;

/// The URL schemes served.
pub const SCHEMES: [&str; 2] = ["nats", "tls"];

/// Serve the [`SCHEMES`] as brokers, result stores and blob stores in
/// `backends`.
pub fn register(backends: &mut pipeline_core::connect::Backends) {
    for scheme in SCHEMES {
        backends.broker(scheme, |url, options| async move {
            let broker =
                NatsBroker::connect(&url, &options.namespace, &options.client_name).await?;
            Ok(Arc::new(broker) as Arc<dyn Broker>)
        });
        backends.results(scheme, |url, options| async move {
            let store =
                NatsResultStore::connect(&url, &options.namespace, &options.client_name).await?;
            Ok(Arc::new(store) as Arc<dyn pipeline_core::ResultStore>)
        });
        backends.blobs(scheme, |url, options| async move {
            let store =
                NatsBlobStore::connect(&url, &options.namespace, &options.client_name).await?;
            Ok(Arc::new(store) as Arc<dyn pipeline_core::BlobStore>)
        });
    }
}

/// JetStream broker. Cheap to clone.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// A queue's bindings, kept as its consumer's description.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Binding {
    patterns: Vec<String>,
    max_attempts: u32,
    /// Whether the queue takes the messages' parts (absent before: yes).
    #[serde(default = "takes_parts")]
    parts: bool,
}

fn takes_parts() -> bool {
    true
}

impl Binding {
    fn spec(&self, queue: &str) -> QueueSpec {
        let patterns: Vec<&str> = self.patterns.iter().map(String::as_str).collect();
        let spec = QueueSpec::new(queue, &patterns, self.max_attempts);
        if self.parts {
            spec
        } else {
            spec.without_parts()
        }
    }
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) namespace: String,
    storage: stream::StorageType,
    replicas: usize,
    /// Unsettled deliveries come back after this; holders of long jobs
    /// keep theirs with progress notes every third of it.
    pub(crate) ack_wait: Duration,
    /// Largest message the server takes.
    max_payload: usize,
    /// Longest a publish is tried through an outage.
    publish_timeout: Duration,
    /// Queues known to this process, for routing.
    bindings: Bindings,
    pub(crate) closed: AtomicBool,
}

pub(crate) fn nats_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NATS: {what}: {e}"))
}

/// Options of a `nats://` URL, taken out of its query.
pub(crate) struct UrlOptions {
    pub(crate) storage: stream::StorageType,
    pub(crate) replicas: usize,
    ack_wait: Duration,
    publish_timeout: Duration,
}

/// Pauses between tries of a publish through an outage.
const PUBLISH_BACKOFF: pipeline_core::Backoff =
    pipeline_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).with_jitter();

pub(crate) fn parse_url(url: &str) -> Result<(BackendUrl, UrlOptions)> {
    let mut u = BackendUrl::parse(url)?;
    let storage = match u.take("storage").as_deref() {
        None | Some("file") => stream::StorageType::File,
        Some("memory") => stream::StorageType::Memory,
        Some(other) => {
            return Err(Error::Config(format!(
                "NATS URL {u}: storage must be file or memory, not {other:?}"
            )));
        }
    };
    let replicas = u.take_parsed::<usize>("replicas")?.unwrap_or(1).max(1);
    let ack_wait = Duration::from_millis(
        u.take_parsed::<u64>("ack_wait_ms")?
            .unwrap_or(5000)
            .max(300),
    );
    // Below the stream's 2-minute deduplication window.
    let publish_timeout = Duration::from_millis(
        u.take_parsed::<u64>("publish_timeout_ms")?
            .unwrap_or(30_000)
            .clamp(100, 100_000),
    );
    u.reject_remaining(&[])?;
    Ok((
        u,
        UrlOptions {
            storage,
            replicas,
            ack_wait,
            publish_timeout,
        },
    ))
}

/// Stream, subject prefix and consumer names allow only these characters.
pub(crate) fn check_namespace(namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "NATS namespace {namespace:?}: use A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

/// A client of `u` named `client_name`, reconnecting for ever and logging
/// its losses of connection.
pub(crate) async fn connect_client(
    u: &BackendUrl,
    client_name: &str,
) -> Result<async_nats::Client> {
    let redacted = u.to_string();
    // Set by a loss, so the connection after it counts as a reconnect.
    let lost = Arc::new(AtomicBool::new(false));
    async_nats::ConnectOptions::new()
        .name(client_name)
        .max_reconnects(None)
        .event_callback(move |event| {
            let url = redacted.clone();
            let lost = Arc::clone(&lost);
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        tracing::warn!(%url, "NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        if lost.swap(false, Ordering::Relaxed) {
                            pipeline_core::telemetry::reconnected("nats");
                        }
                        tracing::info!(%url, "NATS connected")
                    }
                    other => tracing::debug!(%url, event = %other, "NATS event"),
                }
            }
        })
        .connect(u.per_host())
        .await
        .map_err(|e| nats_error(&format!("connect to {u}"), e))
}

impl NatsBroker {
    /// Connect to `url` (`nats://[user:pass@]host:port[,host2:port]` or
    /// `tls://...`) for `namespace`, naming the connection `client_name`.
    ///
    /// Options in the query string: `storage` (`file`, the default, or
    /// `memory`), `replicas` (1), `ack_wait_ms` (5000: a delivery held
    /// by a dead consumer comes back after this; a live one keeps its
    /// deliveries with progress notes) and `publish_timeout_ms` (30000: how
    /// long a publish is tried through an outage, under one message id).
    pub async fn connect(url: &str, namespace: &str, client_name: &str) -> Result<Self> {
        check_namespace(namespace)?;
        let (u, options) = parse_url(url)?;
        let client = connect_client(&u, client_name).await?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        let inner = Arc::new(Inner {
            client,
            js,
            namespace: namespace.to_string(),
            storage: options.storage,
            replicas: options.replicas,
            ack_wait: options.ack_wait,
            max_payload,
            publish_timeout: options.publish_timeout,
            bindings: Bindings::new(),
            closed: AtomicBool::new(false),
        });
        inner.stream().await?;
        Ok(Self { inner })
    }

    /// Delete the namespace's stream, its queues and messages (tests,
    /// decommissioning).
    pub async fn delete_all(&self) -> Result<()> {
        match self.inner.js.delete_stream(&self.inner.namespace).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(nats_error("delete the stream", e)),
        }
    }
}

impl Inner {
    /// The subject of `queue`.
    pub(crate) fn subject(&self, queue: &str) -> String {
        format!("{}.q.{queue}", self.namespace)
    }

    /// The durable consumer name of `queue`.
    pub(crate) fn consumer_name(queue: &str) -> String {
        queue.replace('.', "-")
    }

    /// The namespace's stream, created when missing.
    pub(crate) async fn stream(&self) -> Result<stream::Stream> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.namespace.clone(),
                subjects: vec![format!("{}.q.>", self.namespace)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: self.storage,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("create the stream", e))
    }

    async fn declare_queue(&self, name: &str, binding: &Binding) -> Result<()> {
        let description = serde_json::to_string(binding)
            .map_err(|e| Error::Config(format!("encode the bindings of {name}: {e}")))?;
        let consumer = Self::consumer_name(name);
        self.stream()
            .await?
            .create_consumer(pull::Config {
                durable_name: Some(consumer.clone()),
                description: Some(description),
                filter_subject: self.subject(name),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                // Attempts are counted by the policy, not by the server.
                max_deliver: -1,
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error(&format!("declare queue {name}"), e))?;
        Ok(())
    }

    /// Learn every queue's bindings from the server (queues other
    /// processes declared).
    async fn load_bindings(&self) -> Result<()> {
        let stream = self.stream().await?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers
            .try_next()
            .await
            .map_err(|e| nats_error("list the queues", e))?
        {
            let queue = info
                .config
                .filter_subject
                .strip_prefix(&format!("{}.q.", self.namespace))
                .map(str::to_string);
            let binding = info
                .config
                .description
                .as_deref()
                .and_then(|d| serde_json::from_str::<Binding>(d).ok());
            if let (Some(queue), Some(binding)) = (queue, binding) {
                self.bindings.set(&binding.spec(&queue));
            }
        }
        Ok(())
    }

    /// Deliveries of `queue` before it is dead-lettered.
    pub(crate) async fn max_attempts(&self, queue: &str) -> Result<u32> {
        if let Some(n) = self.bindings.max_attempts(queue) {
            return Ok(n);
        }
        self.load_bindings().await?;
        self.bindings
            .max_attempts(queue)
            .ok_or_else(|| Error::NotFound(format!("queue {queue:?} is not declared")))
    }

    /// Publish `frame` to `queue`'s subject and wait for JetStream's ack.
    ///
    /// Through a lost connection or a server restart the publish is tried
    /// again, for up to `publish_timeout`, under one message id: if an
    /// earlier try was stored but its ack lost, the server drops the copy
    /// (deduplication window), so the message is stored once.
    pub(crate) async fn publish_frame(&self, queue: &str, frame: Bytes) -> Result<()> {
        if frame.len() > self.max_payload {
            return Err(Error::invalid(format!(
                "a message of {} bytes exceeds the NATS server's max_payload of {} bytes",
                frame.len(),
                self.max_payload
            )));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut backoff = PUBLISH_BACKOFF.start();
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(frame.clone())
                .message_id(id.as_str());
            let outcome = match self.js.send_publish(self.subject(queue), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(nats_error(&format!("publish to {queue}"), e));
                }
                Err(e) => {
                    tracing::debug!(queue, error = %e, "publish not acknowledged; trying again");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Publish `envelope` to `queue` (a dead letter, say).
    pub(crate) async fn publish_to(&self, queue: &str, envelope: &Envelope) -> Result<()> {
        self.publish_frame(queue, wire::encode(envelope)?).await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            self.inner.storage == stream::StorageType::File,
            false,
            true,
            Some(self.inner.max_payload),
        )
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        let inner = &self.inner;
        for spec in queues {
            let binding = Binding {
                patterns: spec.patterns.clone(),
                max_attempts: spec.max_attempts,
                parts: spec.parts,
            };
            inner.declare_queue(&spec.name, &binding).await?;
            let dead = Binding {
                patterns: Vec::new(),
                // A dead letter is never dead-lettered again.
                max_attempts: u32::MAX,
                parts: true,
            };
            let dead_queue = dead_letter_queue(&spec.name);
            inner.declare_queue(&dead_queue, &dead).await?;
            inner.bindings.set(spec);
            inner.bindings.set(&dead.spec(&dead_queue));
        }
        Ok(())
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("NATS broker is closed".into()));
        }
        let mut targets = inner.bindings.targets(&envelope.event);
        if targets.is_empty() {
            inner.load_bindings().await?;
            targets = inner.bindings.targets(&envelope.event);
        }
        if targets.is_empty() {
            return Err(unroutable(&envelope.event));
        }
        // One publish per bound queue, waiting for their acks together.
        fan_out(&envelope, targets, |queue, frame| async move {
            inner.publish_frame(&queue, frame).await
        })
        .await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        consumer::subscribe(Arc::clone(&self.inner), subscription).await
    }

    async fn ready(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("NATS broker is closed".into()));
        }
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::Unavailable(format!("NATS connection is {state:?}"))),
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    /// Messages: waiting plus delivered and not acked, from the queue's
    /// consumer. Consumers: unknown (`None`), a pull consumer does not
    /// count the processes pulling from it.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.queue_stats(queue).await
    }

    /// Read from the stream by subject: the messages stay, unmarked.
    async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.inner.peek_dead(queue, limit).await
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64> {
        self.inner.purge_dead(queue).await
    }
}
