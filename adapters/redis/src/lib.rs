//! # pipeline-redis
//!
//! A [`Broker`] on Redis Streams and a [`ResultStore`](pipeline_core::ResultStore)
//! on Redis hashes, through `fred`. See `docs/backends/redis.md`.
//!
//! Layout for a namespace `ns`: one stream per queue, `{ns.queue}`, with a
//! consumer group `pipeline`; dead letters in `{ns.queue}:dead`; delayed
//! retries in the sorted set `{ns.queue}:delayed` (score = due time), moved
//! back by a script; routing patterns in the hash `{ns}:bindings`. Keys of
//! one queue share a hash tag, so they live in one cluster slot.

mod consumer;
mod results;

pub use results::RedisResultStore;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, HashesInterface, KeysInterface, ReconnectPolicy,
    SortedSetsInterface, StreamsInterface,
};
use fred::types::Value;
use pipeline_core::broker::bindings::{Bindings, fan_out, unroutable};
use pipeline_core::broker::{
    Broker, Capabilities, DeliveryStream, QueueSpec, QueueStats, Subscription, dead_letter_queue,
    policy,
};
use pipeline_core::{Envelope, Error, Result, wire};

/// Consumer group of every stream.
const GROUP: &str = "pipeline";
/// Field holding the frame in a stream entry.
const FIELD: &str = "f";

/// Redis Streams broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    client: fred::clients::Client,
    config: Config,
    namespace: String,
    /// Queues known to this process, for routing.
    bindings: Bindings,
    closed: AtomicBool,
    /// Keys created by `declare` expire after this (tests, ephemeral setups).
    key_ttl: Option<Duration>,
    /// Entries pending this long with a consumer are taken over (its
    /// consumer is presumed dead): the safety net behind liveness.
    pub(crate) claim_idle: Duration,
    /// A consumer's heartbeat key lives this long; once it has expired,
    /// the consumer is dead and live ones take its entries over.
    pub(crate) liveness: Duration,
}

pub(crate) fn redis_error(what: &str, e: fred::error::Error) -> Error {
    let message = format!("{what}: {e}");
    // `maxmemory` reached with a no-eviction policy: held until room is made.
    if e.details().starts_with("OOM ") {
        return Error::StorageFull {
            backend: "redis",
            message,
        };
    }
    Error::Unavailable(message)
}

use pipeline_core::urls::BackendUrl;
pub use pipeline_core::urls::redact;

/// The URL schemes served: a single server, TLS, a cluster, Sentinel.
pub const SCHEMES: [&str; 4] = ["redis", "rediss", "redis-cluster", "redis-sentinel"];

/// Serve the [`SCHEMES`] as brokers and result stores in `backends`.
pub fn register(backends: &mut pipeline_core::connect::Backends) {
    for scheme in SCHEMES {
        backends.broker(scheme, |url, options| async move {
            let broker = RedisBroker::connect(&url, &options.namespace).await?;
            Ok(Arc::new(broker) as Arc<dyn Broker>)
        });
        backends.results(scheme, |url, options| async move {
            let store = RedisResultStore::connect(&url, &options.namespace).await?;
            Ok(Arc::new(store) as Arc<dyn pipeline_core::ResultStore>)
        });
    }
}

impl RedisBroker {
    /// Connect to `url` (`redis://`, `rediss://`, or a cluster / sentinel
    /// URL as fred reads it) for `namespace`.
    ///
    /// Adapter options in the query string (removed before fred reads the
    /// URL): `liveness_ms` (default 2000: a consumer whose heartbeat is
    /// older is dead, and its entries move on), `claim_idle_ms` (default
    /// 60000: the safety net for entries of consumers without a
    /// heartbeat), `key_ttl_s` (none) and `ca_file` (PEM roots for
    /// `rediss://`; default the system's).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let (config, options) = config_from_url(url)?;
        Self::connect_config(
            config,
            url,
            namespace,
            options.key_ttl,
            options.claim_idle.unwrap_or(Duration::from_secs(60)),
            options.liveness.unwrap_or(DEFAULT_LIVENESS),
        )
        .await
    }

    /// Like [`connect`](Self::connect); the keys `declare` creates expire
    /// after `key_ttl` (for tests and ephemeral environments).
    pub async fn connect_with_key_ttl(
        url: &str,
        namespace: &str,
        key_ttl: Option<Duration>,
    ) -> Result<Self> {
        Self::connect_with(url, namespace, key_ttl, Duration::from_secs(60)).await
    }

    /// Full control: `key_ttl` as above; entries left pending for
    /// `claim_idle` by a consumer (presumed dead) are claimed by live ones.
    pub async fn connect_with(
        url: &str,
        namespace: &str,
        key_ttl: Option<Duration>,
        claim_idle: Duration,
    ) -> Result<Self> {
        let (config, options) = config_from_url(url)?;
        let liveness = options.liveness.unwrap_or(DEFAULT_LIVENESS);
        Self::connect_config(config, url, namespace, key_ttl, claim_idle, liveness).await
    }

    async fn connect_config(
        config: Config,
        url: &str,
        namespace: &str,
        key_ttl: Option<Duration>,
        claim_idle: Duration,
        liveness: Duration,
    ) -> Result<Self> {
        let client = new_client(&config)?;
        client
            .init()
            .await
            .map_err(|e| redis_error(&format!("connect to {}", redact(url)), e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                namespace: namespace.to_string(),
                bindings: Bindings::new(),
                closed: AtomicBool::new(false),
                key_ttl,
                claim_idle,
                liveness,
            }),
        })
    }
}

impl RedisBroker {
    /// Delete every key of this namespace: the streams, dead-letter streams
    /// and delayed retries of every bound queue, and the bindings. For tests
    /// and for decommissioning a namespace; its consumers must be stopped.
    /// Returns how many keys existed.
    pub async fn delete_all(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.load_bindings().await?;
        let queues: Vec<String> = inner.bindings.all().into_iter().map(|q| q.name).collect();
        let mut keys = vec![inner.bindings_key()];
        for q in &queues {
            let dead = dead_letter_queue(q);
            keys.extend([
                inner.stream(q),
                inner.delayed(q),
                inner.stream(&dead),
                inner.delayed(&dead),
            ]);
        }
        let mut deleted = 0;
        // One key per command: the keys of different queues may live in
        // different cluster slots.
        for key in keys {
            let n: u64 = inner
                .client
                .del(key)
                .await
                .map_err(|e| redis_error("DEL", e))?;
            deleted += n;
        }
        Ok(deleted)
    }
}

/// The adapter's own URL options (taken out before fred reads the URL).
#[derive(Debug, Default)]
pub(crate) struct UrlOptions {
    claim_idle: Option<Duration>,
    key_ttl: Option<Duration>,
    liveness: Option<Duration>,
}

/// Default heartbeat lifetime of a consumer.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(2);

/// fred's configuration for `url`, and the adapter's options in it:
/// `claim_idle_ms`, `key_ttl_s`, and `ca_file` (PEM certificates trusted
/// for `rediss://` instead of the system's roots).
pub(crate) fn config_from_url(url: &str) -> Result<(Config, UrlOptions)> {
    let mut u = BackendUrl::parse(url)?;
    let bad = |u: &BackendUrl, why: String| Error::Config(format!("Redis URL {u}: {why}"));
    let options = UrlOptions {
        claim_idle: u
            .take_parsed::<u64>("claim_idle_ms")?
            .map(|ms| Duration::from_millis(ms.max(100))),
        key_ttl: u
            .take_parsed::<u64>("key_ttl_s")?
            .map(|s| Duration::from_secs(s.max(1))),
        liveness: u
            .take_parsed::<u64>("liveness_ms")?
            .map(|ms| Duration::from_millis(ms.max(300))),
    };
    let ca_file = u.take("ca_file");
    let mut config = Config::from_url(u.as_str()).map_err(|e| bad(&u, e.to_string()))?;
    if let Some(path) = ca_file {
        if config.tls.is_none() {
            return Err(bad(&u, "ca_file needs a TLS URL (rediss://)".into()));
        }
        config.tls = Some(tls_trusting(&path).map_err(|why| bad(&u, why))?.into());
    }
    Ok((config, options))
}

/// A rustls client trusting the PEM certificates in `path` only.
fn tls_trusting(path: &str) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {path}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca_file {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {path}: no certificate in it"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// PING with a bound: while fred reconnects, commands queue instead of
/// failing, and readiness must answer during an outage.
pub(crate) async fn bounded_ping(client: &fred::clients::Client) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(2), client.ping::<String>(None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(redis_error("PING", e)),
        Err(_) => Err(Error::Unavailable(
            "Redis did not answer PING within 2 s (reconnecting?)".into(),
        )),
    }
}

/// Bound of every command: while fred reconnects, commands wait in its
/// queue; past this they fail with a retryable error instead of hanging
/// (an API request during a Redis outage gets a 503, not a stall).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client that reconnects by itself (exponential backoff, no limit).
/// A connection to a server it had reached before counts in the reconnect
/// metric.
pub(crate) fn new_client(config: &Config) -> Result<fred::clients::Client> {
    let client = Builder::from_config(config.clone())
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .build()
        .map_err(|e| Error::Config(format!("Redis client: {e}")))?;
    if tokio::runtime::Handle::try_current().is_ok() {
        // fred announces every connection, the first to each server (each
        // node of a cluster) included: count the servers seen before.
        let seen = std::sync::Mutex::new(std::collections::HashSet::new());
        let _listener = client.on_reconnect(move |server| {
            let again = !seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(server.to_string());
            if again {
                pipeline_core::telemetry::reconnected("redis");
            }
            std::future::ready(Ok(()))
        });
    }
    Ok(client)
}

impl Inner {
    /// Stream of a queue; a dead-letter queue lives beside its queue.
    pub(crate) fn stream(&self, queue: &str) -> String {
        match queue.strip_suffix(".dead") {
            Some(base) => format!("{{{}.{base}}}:dead", self.namespace),
            None => format!("{{{}.{queue}}}", self.namespace),
        }
    }

    /// Heartbeat key of `consumer` of `queue` (beside its stream, in the
    /// same cluster slot).
    pub(crate) fn alive_key(&self, queue: &str, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.stream(queue))
    }

    pub(crate) fn delayed(&self, queue: &str) -> String {
        format!("{}:delayed", self.stream(queue))
    }

    fn bindings_key(&self) -> String {
        format!("{{{}}}:bindings", self.namespace)
    }

    pub(crate) fn max_attempts(&self, queue: &str) -> u32 {
        self.bindings.max_attempts(queue).unwrap_or(u32::MAX)
    }

    fn targets(&self, key: &str) -> Vec<(String, bool)> {
        self.bindings.targets(key)
    }

    /// Reload the bindings other processes declared.
    async fn load_bindings(&self) -> Result<()> {
        let all: std::collections::HashMap<String, String> = self
            .client
            .hgetall(self.bindings_key())
            .await
            .map_err(|e| redis_error("read bindings", e))?;
        for (queue, value) in all {
            self.bindings.set(&parse_binding(&queue, &value));
        }
        Ok(())
    }

    /// Create the consumer groups of `queue` and its dead-letter stream
    /// (and the streams), keeping groups that exist.
    pub(crate) async fn create_groups(&self, queue: &str) -> Result<()> {
        for queue in [queue.to_string(), dead_letter_queue(queue)] {
            let created: std::result::Result<(), fred::error::Error> = self
                .client
                .xgroup_create(self.stream(&queue), GROUP, "0", true)
                .await;
            if let Err(e) = created
                && !e.to_string().contains("BUSYGROUP")
            {
                return Err(redis_error(&format!("create the group of {queue:?}"), e));
            }
        }
        Ok(())
    }

    async fn store_binding(&self, spec: &QueueSpec) -> Result<()> {
        let _: i64 = self
            .client
            .hset(
                self.bindings_key(),
                (spec.name.clone(), binding_value(spec)),
            )
            .await
            .map_err(|e| redis_error("store bindings", e))?;
        Ok(())
    }

    /// After Redis lost its data (a restart without persistence, a
    /// failover to an empty replica): recreate the groups of `queue` and
    /// store again every binding this process knows, so consumers and
    /// publishers carry on.
    pub(crate) async fn restore(&self, queue: &str) -> Result<()> {
        self.create_groups(queue).await?;
        for spec in self.bindings.all() {
            self.store_binding(&spec).await?;
        }
        Ok(())
    }

    /// `Ok` if `queue` is declared (by this process or another).
    async fn known(&self, queue: &str) -> Result<()> {
        if self.bindings.max_attempts(queue).is_none() {
            self.load_bindings().await?;
        }
        match self.bindings.max_attempts(queue) {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("queue {queue:?} is not declared"))),
        }
    }

    /// Append `frame` to the stream of `queue`.
    pub(crate) async fn add(&self, queue: &str, frame: Bytes) -> Result<()> {
        let _: String = self
            .client
            .xadd(self.stream(queue), false, None, "*", vec![(FIELD, frame)])
            .await
            .map_err(|e| redis_error(&format!("XADD to {queue:?}"), e))?;
        Ok(())
    }

    /// Put `envelope`, already marked by the delivery policy, in the
    /// dead-letter stream of `queue`.
    pub(crate) async fn add_dead(&self, queue: &str, envelope: &Envelope) -> Result<()> {
        self.add(&dead_letter_queue(queue), wire::encode(envelope)?)
            .await
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, true, true, Some(512 * 1024 * 1024))
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        let inner = &self.inner;
        for spec in queues {
            inner.create_groups(&spec.name).await?;
            inner.store_binding(spec).await?;
            if let Some(ttl) = inner.key_ttl {
                for key in [
                    inner.stream(&spec.name),
                    inner.stream(&dead_letter_queue(&spec.name)),
                    inner.bindings_key(),
                ] {
                    let _: i64 = inner
                        .client
                        .expire(key, ttl.as_secs().max(1) as i64, None)
                        .await
                        .map_err(|e| redis_error("EXPIRE", e))?;
                }
            }
            inner.bindings.set(spec);
        }
        Ok(())
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("Redis broker is closed".into()));
        }
        let mut targets = inner.targets(&envelope.event);
        if targets.is_empty() {
            inner.load_bindings().await?;
            targets = inner.targets(&envelope.event);
        }
        if targets.is_empty() {
            return Err(unroutable(&envelope.event));
        }
        // One XADD per bound stream, sent together (one round trip); the
        // streams may live in different cluster slots.
        fan_out(&envelope, targets, |queue, frame| async move {
            inner.add(&queue, frame).await
        })
        .await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        consumer::subscribe(Arc::clone(&self.inner), subscription).await
    }

    async fn ready(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("Redis broker is closed".into()));
        }
        crate::bounded_ping(&self.inner.client).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    /// Messages: the stream's entries (waiting or delivered and not yet
    /// acked: settled entries are deleted) plus delayed retries. Consumers:
    /// those of the queue's group, as `XINFO GROUPS` lists them.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let inner = &self.inner;
        inner.known(queue).await?;
        let client = &inner.client;
        let entries: u64 = client
            .xlen(inner.stream(queue))
            .await
            .map_err(|e| redis_error("XLEN", e))?;
        let delayed: u64 = client
            .zcard(inner.delayed(queue))
            .await
            .map_err(|e| redis_error("ZCARD", e))?;
        let dead: u64 = client
            .xlen(inner.stream(&dead_letter_queue(queue)))
            .await
            .map_err(|e| redis_error("XLEN", e))?;
        let groups: Value = client
            .xinfo_groups(inner.stream(queue))
            .await
            .map_err(|e| redis_error("XINFO GROUPS", e))?;
        Ok(QueueStats::new(
            entries + delayed,
            group_consumers(groups),
            dead,
        ))
    }

    async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let inner = &self.inner;
        inner.known(queue).await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, HashMap<String, Bytes>)> = inner
            .client
            .xrange(
                inner.stream(&dead_letter_queue(queue)),
                "-",
                "+",
                Some(limit as u64),
            )
            .await
            .map_err(|e| redis_error("XRANGE", e))?;
        Ok(entries
            .into_iter()
            .map(|(_, mut fields)| {
                let frame = fields.remove(FIELD).unwrap_or_default();
                wire::decode(frame.clone()).unwrap_or_else(|e| policy::malformed(queue, frame, &e))
            })
            .collect())
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64> {
        let inner = &self.inner;
        inner.known(queue).await?;
        inner
            .client
            .xtrim(inner.stream(&dead_letter_queue(queue)), ("MAXLEN", 0))
            .await
            .map_err(|e| redis_error("XTRIM", e))
    }
}

/// The entries of an `XINFO GROUPS` or `XINFO CONSUMERS` reply: a list of
/// maps (RESP3) or flat key/value lists (RESP2), as name/value pairs.
pub(crate) fn info_records(reply: Value) -> Vec<Vec<(String, Value)>> {
    let Value::Array(records) = reply else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter_map(|record| match record {
            Value::Map(map) => Some(
                map.inner()
                    .into_iter()
                    .filter_map(|(k, v)| Some((Value::from(k).as_string()?, v)))
                    .collect(),
            ),
            Value::Array(flat) => {
                let mut it = flat.into_iter();
                Some(
                    std::iter::from_fn(|| Some((it.next()?, it.next()?)))
                        .filter_map(|(k, v)| Some((k.as_string()?, v)))
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

/// The value of `name` in an info record.
pub(crate) fn info_field<'a>(record: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    record.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The consumer count of the pipeline's group in an `XINFO GROUPS` reply.
fn group_consumers(groups: Value) -> Option<u64> {
    info_records(groups).into_iter().find_map(|group| {
        if info_field(&group, "name")?.as_str().as_deref() != Some(GROUP) {
            return None;
        }
        info_field(&group, "consumers")?.as_u64()
    })
}

/// Delays shorter than this are retried at once.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(1);

/// A binding as stored in the bindings hash: `max_attempts`, then the
/// patterns, space-separated, then `~noparts` for a queue that takes no
/// parts (a token older readers take for a pattern no key matches).
fn binding_value(spec: &QueueSpec) -> String {
    let mut value = format!("{} {}", spec.max_attempts, spec.patterns.join(" "));
    if !spec.parts {
        value.push(' ');
        value.push_str(NO_PARTS);
    }
    value
}

/// The token of [`binding_value`] for a queue without parts.
const NO_PARTS: &str = "~noparts";

/// The binding of `queue` from its stored value (see [`binding_value`]).
fn parse_binding(queue: &str, value: &str) -> QueueSpec {
    let (max, patterns) = value.split_once(' ').unwrap_or(("5", ""));
    let words: Vec<&str> = patterns.split(' ').filter(|p| !p.is_empty()).collect();
    let patterns: Vec<&str> = words.iter().copied().filter(|p| *p != NO_PARTS).collect();
    let spec = QueueSpec::new(queue, &patterns, max.parse().unwrap_or(5));
    if words.contains(&NO_PARTS) {
        spec.without_parts()
    } else {
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_round_trip_through_their_stored_value() {
        for spec in [
            QueueSpec::new("a", &["image.*", "x.#"], 7),
            QueueSpec::new("b", &["#"], 3).without_parts(),
            QueueSpec::new("c", &[], 9),
        ] {
            assert_eq!(parse_binding(&spec.name, &binding_value(&spec)), spec);
        }
        // What an earlier version stored still reads, with parts.
        let old = parse_binding("d", "4 image.done");
        assert_eq!(old, QueueSpec::new("d", &["image.done"], 4));
    }
}
