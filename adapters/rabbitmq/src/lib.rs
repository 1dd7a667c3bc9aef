//! # pipeline-rabbitmq
//!
//! A [`Broker`] on RabbitMQ through `lapin`: one durable topic exchange per
//! namespace, one durable queue per role with its bindings, a dead-letter
//! queue and delayed-retry queues per role (message TTL that dead-letters
//! back to the work queue, no plugin needed). Publishes wait for publisher
//! confirms and are `mandatory`; consumers use manual acks and `basic.qos`.
//! The connection recovers by itself (exponential backoff, topology and
//! consumers replayed) and publishes wait for it. See `docs/backends/rabbitmq.md`.

mod acker;
mod acks;
mod admin;
mod config;
mod link;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use pipeline_core::broker::bindings::Frames;
use pipeline_core::broker::{
    Broker, Capabilities, DeliveryStream, QueueSpec, QueueStats, Subscription, dead_letter_queue,
};
use pipeline_core::{Backoff, Envelope, Error, Result, wire};

pub use config::{QueueType, RabbitConfig, redact};

/// Delays of the retry queues; a nack waits for the smallest one at least
/// as long as asked (each queue has one TTL, so no message waits behind a
/// longer one).
pub const RETRY_DELAYS_MS: [u64; 6] = [1_000, 2_000, 5_000, 10_000, 30_000, 60_000];

/// Longest wait for one answer from the server (lapin does not always
/// resolve a pending call when its connection dies).
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// `fut`, or a timeout error after [`RPC_TIMEOUT`].
pub(crate) async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(RPC_TIMEOUT, fut).await.map_err(|_| {
        Error::Timeout(format!(
            "{what}: no answer from RabbitMQ within {RPC_TIMEOUT:?}"
        ))
    })
}

/// Pauses between tries of a publish while the connection recovers.
const PUBLISH_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter();

/// Pauses between reconnection and resubscription attempts.
pub(crate) const RECONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).with_jitter();

/// Content type of pipeline frames on the wire.
const FRAME_TYPE: &str = "application/x-pipeline-frame";

/// RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("namespace", &self.inner.namespace)
            .field("connection_name", &self.inner.connection_name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    links: link::Links,
    next_publisher: AtomicUsize,
    namespace: String,
    connection_name: String,
    config: RabbitConfig,
    /// What `declare` was asked for, declared again on every new connection.
    declared: Mutex<Vec<QueueSpec>>,
    /// Whether a queue without parts was declared: publishes then also
    /// send a copy without parts to the exchange such queues are bound to.
    partless: AtomicBool,
    consumers: Mutex<Vec<(Channel, ShortString)>>,
    closed: AtomicBool,
}

fn unavailable(what: &str, e: &lapin::Error) -> Error {
    if e.is_amqp_soft_error() {
        Error::backend("rabbitmq", format!("{what}: {e}"), false)
    } else {
        Error::Unavailable(format!("{what}: {e}"))
    }
}

fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    t
}

/// Serve `amqp://` and `amqps://` broker URLs in `backends`.
pub fn register(backends: &mut pipeline_core::connect::Backends) {
    for scheme in ["amqp", "amqps"] {
        backends.broker(scheme, |url, options| async move {
            let broker =
                RabbitBroker::connect(&url, &options.namespace, &options.client_name).await?;
            Ok(Arc::new(broker) as Arc<dyn Broker>)
        });
    }
}

impl RabbitBroker {
    /// Connect to `url` (see [`RabbitConfig::parse`]) for `namespace`; the
    /// connection shows as `connection_name` in the management tools.
    pub async fn connect(url: &str, namespace: &str, connection_name: &str) -> Result<Self> {
        let config = RabbitConfig::parse(url)?;
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "namespace {namespace:?} is not usable as a RabbitMQ name prefix"
            )));
        }
        let inner = Arc::new(Inner {
            links: link::Links::new(),
            next_publisher: AtomicUsize::new(0),
            namespace: namespace.to_string(),
            connection_name: connection_name.to_string(),
            config,
            declared: Mutex::new(Vec::new()),
            partless: AtomicBool::new(false),
            consumers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        inner.link().await?;
        link::supervise(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The name this connection shows in `rabbitmqctl list_connections`.
    pub fn connection_name(&self) -> &str {
        &self.inner.connection_name
    }

    /// The full name of a role queue.
    pub fn queue_name(&self, queue: &str) -> String {
        self.inner.full(queue)
    }

    /// Delete every queue this broker declared (with their dead-letter and
    /// retry queues) and the namespace's exchange: for tests and for
    /// decommissioning a namespace (its consumers must be stopped).
    /// Returns how many queues were deleted.
    pub async fn delete_all(&self) -> Result<usize> {
        let link = self.inner.link().await?;
        let ch = link
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", &e))?;
        let mut names = Vec::new();
        for spec in self.inner.declared_specs() {
            let full = self.inner.full(&spec.name);
            names.push(self.inner.full(&dead_letter_queue(&spec.name)));
            names.extend(
                RETRY_DELAYS_MS
                    .iter()
                    .map(|ms| format!("{full}.retry.{ms}")),
            );
            names.push(full);
        }
        for name in &names {
            let deleted = ch.queue_delete(
                name.clone().into(),
                lapin::options::QueueDeleteOptions::default(),
            );
            bounded("delete a queue", deleted)
                .await?
                .map_err(|e| unavailable(&format!("delete queue {name:?}"), &e))?;
        }
        // Deleting an exchange that does not exist is not an error.
        for name in [self.inner.namespace.clone(), self.inner.partless_exchange()] {
            let exchange = ch.exchange_delete(
                name.clone().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            );
            bounded("delete an exchange", exchange)
                .await?
                .map_err(|e| unavailable(&format!("delete the exchange {name:?}"), &e))?;
        }
        let _ = bounded("close a channel", ch.close(200, "deleted".into())).await;
        Ok(names.len())
    }
}

impl Inner {
    fn full(&self, queue: &str) -> String {
        format!("{}.{queue}", self.namespace)
    }

    /// The queue name without the namespace, as the pipeline knows it.
    pub(crate) fn short<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(&self.namespace)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(full)
    }

    fn max_attempts_of(&self, full: &str) -> u32 {
        self.declared_as(full).map_or(u32::MAX, |q| q.max_attempts)
    }

    /// Whether the queue `full` takes the messages' parts: yes, unless this
    /// process declared it without.
    fn takes_parts(&self, full: &str) -> bool {
        self.declared_as(full).is_none_or(|q| q.parts)
    }

    /// How this process declared the queue `full`, if it did.
    fn declared_as(&self, full: &str) -> Option<QueueSpec> {
        self.declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|q| self.full(&q.name) == full)
            .cloned()
    }

    /// The exchange queues declared without parts are bound to.
    fn partless_exchange(&self) -> String {
        format!("{}.noparts", self.namespace)
    }

    fn declared_specs(&self) -> Vec<QueueSpec> {
        self.declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn queue_args(&self, extra: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut pairs = extra;
        if self.config.queue_type == QueueType::Quorum {
            pairs.push(("x-queue-type", AMQPValue::LongString("quorum".into())));
        }
        if let Some(v) = self.config.queue_version {
            pairs.push(("x-queue-version", AMQPValue::LongInt(i32::from(v))));
        }
        if let Some(exp) = self.config.queue_expiry {
            pairs.push(("x-expires", AMQPValue::LongLongInt(exp.as_millis() as i64)));
        }
        table(pairs)
    }

    /// Publish `payload` and wait for the confirm; while the connection
    /// recovers, wait (up to the publish timeout) and try again.
    pub(crate) async fn send(
        &self,
        exchange: &str,
        key: &str,
        payload: &[u8],
        message_id: &str,
        expiration: Option<u64>,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(FRAME_TYPE.into())
            .with_message_id(message_id.into());
        if let Some(ms) = expiration {
            props = props.with_expiration(ms.to_string().into());
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut backoff = PUBLISH_BACKOFF.start();
        loop {
            let err = match self.link().await {
                Err(e) => e,
                Ok(link) => {
                    let n =
                        self.next_publisher.fetch_add(1, Ordering::Relaxed) % link.publishers.len();
                    let channel = &link.publishers[n];
                    let attempt = async {
                        channel
                            .basic_publish(
                                exchange.into(),
                                key.into(),
                                options,
                                payload,
                                props.clone(),
                            )
                            .await?
                            .await
                    };
                    match tokio::time::timeout_at(deadline, attempt).await {
                        Err(_) => {
                            return Err(Error::Timeout(format!(
                                "publishing to {key:?}: no confirm within {:?}",
                                self.config.publish_timeout
                            )));
                        }
                        Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                        Ok(Ok(Confirmation::Ack(Some(_)))) => {
                            return Err(Error::NotFound(format!(
                                "no queue is bound to routing key {key:?} (message returned)"
                            )));
                        }
                        Ok(Ok(Confirmation::Nack(_))) => Error::Unavailable(format!(
                            "RabbitMQ refused to store a message for {key:?}"
                        )),
                        Ok(Ok(Confirmation::NotRequested)) => {
                            return Err(Error::backend(
                                "rabbitmq",
                                "publisher confirms are off on this channel",
                                false,
                            ));
                        }
                        Ok(Err(e)) => {
                            // The channel or the connection failed: rebuild
                            // them (topology included) and try again.
                            self.links.invalidate(link.generation);
                            unavailable(&format!("publishing to {key:?}"), &e)
                        }
                    }
                }
            };
            let pause = backoff.next_delay();
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(err);
            }
            tracing::debug!(key, error = %err, ?pause, "publish failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Send `envelope` straight to the queue called `full` (default exchange).
    pub(crate) async fn send_to_queue(
        &self,
        full: &str,
        envelope: &Envelope,
        expiration: Option<u64>,
    ) -> Result<()> {
        let frame = wire::encode(envelope)?;
        self.send("", full, &frame, &envelope.id.to_string(), expiration)
            .await
    }

    /// Put `envelope`, already marked by the delivery policy, in the
    /// dead-letter queue of `full`.
    pub(crate) async fn send_dead(&self, full: &str, envelope: &Envelope) -> Result<()> {
        self.send_to_queue(&dead_letter_queue(full), envelope, None)
            .await
    }

    /// Declare the exchange and `queues` (with their dead-letter and retry
    /// queues) on `link`.
    pub(crate) async fn declare_on(&self, link: &link::Link, queues: &[QueueSpec]) -> Result<()> {
        let inner = self;
        let ch = link
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", &e))?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let partless = inner.partless_exchange();
        let mut exchanges = vec![inner.namespace.clone()];
        if queues.iter().any(|q| !q.parts) {
            exchanges.push(partless.clone());
        }
        for exchange in exchanges {
            ch.exchange_declare(
                exchange.clone().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: inner.config.queue_expiry.is_some(),
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("declare the exchange {exchange:?}"), &e))?;
        }
        for spec in queues {
            let full = inner.full(&spec.name);
            let dead = inner.full(&dead_letter_queue(&spec.name));
            let mut main_args = Vec::new();
            if inner.config.queue_type == QueueType::Quorum {
                // Safety net for consumers that die over and over on one
                // message: the server dead-letters it.
                main_args.push((
                    "x-delivery-limit",
                    AMQPValue::LongInt(
                        spec.max_attempts.saturating_add(2).min(i32::MAX as u32) as i32
                    ),
                ));
                main_args.push(("x-dead-letter-exchange", AMQPValue::LongString("".into())));
                main_args.push((
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(dead.clone().into()),
                ));
            }
            let what = format!(
                "declare queue {full:?} (if it exists with other settings, delete it or use another namespace)"
            );
            ch.queue_declare(full.clone().into(), durable, inner.queue_args(main_args))
                .await
                .map_err(|e| unavailable(&what, &e))?;
            // A queue without parts is bound to the exchange of the copies
            // without parts (and unbound from the other, where an earlier
            // version bound it).
            let (exchange, other) = if spec.parts {
                (&inner.namespace, None)
            } else {
                (&partless, Some(&inner.namespace))
            };
            for pattern in &spec.patterns {
                ch.queue_bind(
                    full.clone().into(),
                    exchange.clone().into(),
                    pattern.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| unavailable(&format!("bind {full:?} to {pattern:?}"), &e))?;
                if let Some(other) = other {
                    ch.queue_unbind(
                        full.clone().into(),
                        other.clone().into(),
                        pattern.clone().into(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| unavailable(&format!("unbind {full:?} from {other:?}"), &e))?;
                }
            }
            if !spec.parts {
                inner.partless.store(true, Ordering::Release);
            }
            ch.queue_declare(dead.clone().into(), durable, inner.queue_args(Vec::new()))
                .await
                .map_err(|e| unavailable(&format!("declare queue {dead:?}"), &e))?;
            for ms in RETRY_DELAYS_MS {
                let retry = format!("{full}.retry.{ms}");
                let args = inner.queue_args(vec![
                    ("x-message-ttl", AMQPValue::LongLongInt(ms as i64)),
                    ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                    (
                        "x-dead-letter-routing-key",
                        AMQPValue::LongString(full.clone().into()),
                    ),
                ]);
                ch.queue_declare(retry.clone().into(), durable, args)
                    .await
                    .map_err(|e| unavailable(&format!("declare queue {retry:?}"), &e))?;
            }
        }
        let _ = bounded("close a channel", ch.close(200, "declared".into())).await;
        Ok(())
    }

    /// A channel with `prefetch` and a consumer on the queue called `full`.
    pub(crate) async fn open_consumer(
        &self,
        full: &str,
        prefetch: u16,
    ) -> Result<(Channel, lapin::Consumer, u64)> {
        bounded("subscribe", self.open_consumer_unbounded(full, prefetch)).await?
    }

    async fn open_consumer_unbounded(
        &self,
        full: &str,
        prefetch: u16,
    ) -> Result<(Channel, lapin::Consumer, u64)> {
        let link = self.link().await?;
        let channel = link
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", &e))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable("set the prefetch", &e))?;
        let tag = format!("{}.{}", self.connection_name, fastrand::u64(..));
        let consumer = channel
            .basic_consume(
                full.into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("consume {full:?}"), &e))?;
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((channel.clone(), tag.into()));
        Ok((channel, consumer, link.generation))
    }

    /// Send what the delivery policy decided: the retry queue matching the
    /// delay (or the queue itself), or the dead-letter queue.
    pub(crate) async fn dispose(
        &self,
        full: &str,
        disposition: pipeline_core::broker::Disposition,
    ) -> Result<()> {
        use pipeline_core::broker::Disposition;
        match disposition {
            Disposition::DeadLetter { envelope } => self.send_dead(full, &envelope).await,
            Disposition::Retry { envelope, delay } => {
                let target = if delay.is_zero() {
                    full.to_string()
                } else {
                    self.retry_queue(full, delay)
                };
                self.send_to_queue(&target, &envelope, None).await
            }
        }
    }

    /// The retry queue whose delay is the smallest at least `delay`.
    pub(crate) fn retry_queue(&self, full: &str, delay: Duration) -> String {
        let ms = delay.as_millis() as u64;
        let bucket = RETRY_DELAYS_MS
            .iter()
            .copied()
            .find(|b| *b >= ms)
            .unwrap_or(RETRY_DELAYS_MS[RETRY_DELAYS_MS.len() - 1]);
        format!("{full}.retry.{bucket}")
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, true, true, Some(128 * 1024 * 1024))
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        {
            let mut declared = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for spec in queues {
                declared.retain(|q| q.name != spec.name);
                declared.push(spec.clone());
            }
        }
        let link = self.inner.link().await?;
        self.inner.declare_on(&link, queues).await
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("RabbitMQ broker is closed".into()));
        }
        let inner = &self.inner;
        let mut frames = Frames::new(&envelope);
        let (frame, id) = (frames.get(true)?, envelope.id.to_string());
        let whole = inner.send(&inner.namespace, &envelope.event, &frame, &id, None);
        if !inner.partless.load(Ordering::Acquire) {
            return whole.await;
        }
        // The copy without parts goes to the exchange the queues without
        // parts are bound to; each copy may find no queue, not both.
        let bare = frames.get(false)?;
        let exchange = inner.partless_exchange();
        let copy = inner.send(&exchange, &envelope.event, &bare, &id, None);
        match futures::future::join(whole, copy).await {
            (Ok(()), Ok(()) | Err(Error::NotFound(_))) | (Err(Error::NotFound(_)), Ok(())) => {
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let inner = Arc::clone(&self.inner);
        let full = inner.full(&subscription.queue);
        let prefetch = u16::try_from(subscription.prefetch).unwrap_or(u16::MAX);
        let (channel, consumer, generation) = inner.open_consumer(&full, prefetch).await?;
        let state = acker::ConsumerState {
            parts: inner.takes_parts(&full),
            inner,
            full,
            prefetch,
            channel,
            consumer,
            generation,
            acks: Arc::default(),
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut s| async move {
                let item = s.next().await?;
                Some((item, s))
            },
        )))
    }

    async fn ready(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("RabbitMQ broker is closed".into()));
        }
        match self.inner.links.current() {
            Some(link) if link.alive() && link.conn.status().blocked() => Err(Error::Unavailable(
                "RabbitMQ blocked this connection (resource alarm)".into(),
            )),
            Some(link) if link.alive() => Ok(()),
            _ => Err(Error::Unavailable(
                "not connected to RabbitMQ (reconnecting)".into(),
            )),
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let consumers: Vec<(Channel, ShortString)> = std::mem::take(
            &mut *self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (channel, tag) in consumers {
            let cancel = channel.basic_cancel(tag.clone(), BasicCancelOptions::default());
            match bounded("cancel a consumer", cancel).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cancelling a consumer failed (the channel is gone)")
                }
                Err(e) => tracing::debug!(error = %e, "cancelling a consumer timed out"),
            }
        }
        Ok(())
    }

    /// Messages: ready in the queue and in its retry queues (deliveries
    /// not yet acked are not counted). Consumers: RabbitMQ's count.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.queue_stats(queue).await
    }

    /// The messages are fetched unacked and returned when the channel
    /// closes: RabbitMQ marks them redelivered and may put them back in
    /// another order.
    async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.inner.peek_dead(queue, limit).await
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64> {
        self.inner.purge_dead(queue).await
    }
}
