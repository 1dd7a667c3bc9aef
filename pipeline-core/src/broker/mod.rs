//! The publish/subscribe contract every broker backend implements, and the
//! [`policy`] every backend applies to messages that are not acked.

pub mod bindings;
pub mod policy;

pub use policy::{DeadCause, Disposition, MALFORMED_EVENT};

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::envelope::Envelope;
use crate::error::Result;

/// What a backend guarantees. Declared, never guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive a restart of the process and of the broker.
    pub persistent: bool,
    /// Messages of one queue are delivered in publish order (before retries).
    pub ordered: bool,
    /// `nack` with a delay is honoured by the backend.
    pub delayed_retry: bool,
    /// Largest message the backend accepts, if it has a limit.
    pub max_message_bytes: Option<usize>,
}

impl Capabilities {
    /// A capability set; fields are public for reading, this builds one.
    pub const fn new(
        persistent: bool,
        ordered: bool,
        delayed_retry: bool,
        max_message_bytes: Option<usize>,
    ) -> Self {
        Self {
            persistent,
            ordered,
            delayed_retry,
            max_message_bytes,
        }
    }
}

/// A durable named queue and the routing patterns bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name, without the namespace (the backend adds it).
    pub name: String,
    /// Topic patterns: words separated by `.`, `*` matches one word, `#`
    /// matches zero or more.
    pub patterns: Vec<String>,
    /// Deliveries after which a message is dead-lettered instead of retried.
    pub max_attempts: u32,
    /// Whether the queue's consumers read the messages' parts. A queue
    /// without ([`without_parts`](Self::without_parts)) gets each message's
    /// metadata and headers only, with the parts' total size in header
    /// [`payload-bytes`](crate::envelope::headers::PAYLOAD_BYTES): the
    /// activity log, which would otherwise receive every image again.
    pub parts: bool,
}

impl QueueSpec {
    /// A queue bound to `patterns`, dead-lettering after `max_attempts`.
    pub fn new(name: impl Into<String>, patterns: &[&str], max_attempts: u32) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            max_attempts: max_attempts.max(1),
            parts: true,
        }
    }

    /// This queue, receiving messages without their parts (see
    /// [`parts`](Self::parts)).
    pub fn without_parts(mut self) -> Self {
        self.parts = false;
        self
    }
}

/// Name of the queue that collects the dead letters of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Consuming from a declared queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Queue to consume (declared before, or a dead-letter queue).
    pub queue: String,
    /// Most deliveries handed out and not yet settled on this subscription.
    pub prefetch: usize,
}

impl Subscription {
    /// Consume `queue` with at most `prefetch` unsettled deliveries.
    pub fn new(queue: impl Into<String>, prefetch: usize) -> Self {
        Self {
            queue: queue.into(),
            prefetch: prefetch.max(1),
        }
    }
}

/// What a broker reports of one queue ([`Broker::queue_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages in the queue: waiting, delayed for a retry, or handed out
    /// and not yet settled (what each backend counts is in its docs).
    pub messages: u64,
    /// Consumers attached to the queue, where the backend tells.
    pub consumers: Option<u64>,
    /// Messages in the queue's dead-letter queue.
    pub dead_letters: u64,
}

impl QueueStats {
    /// Stats with these figures.
    pub const fn new(messages: u64, consumers: Option<u64>, dead_letters: u64) -> Self {
        Self {
            messages,
            consumers,
            dead_letters,
        }
    }
}

/// A stream of deliveries; it ends when the broker is closed.
pub type DeliveryStream = BoxStream<'static, Result<Delivery>>;

/// A message broker: topic routing into durable queues with competing consumers.
///
/// # Contract
/// - `declare` is idempotent; after it returns, messages whose routing key
///   matches a pattern of a queue are kept in that queue until consumed.
/// - `publish` returns only once the backend has taken responsibility for
///   the message (for example a publisher confirm); the routing key is
///   `envelope.event`. A message no queue is bound to is an error, never a
///   silent drop.
/// - Payload (parts), metadata and headers arrive intact; on a queue
///   declared [without parts](QueueSpec::without_parts), metadata and
///   headers arrive intact with no parts and the parts' total size in
///   header [`payload-bytes`](crate::envelope::headers::PAYLOAD_BYTES).
/// - Each message of a queue goes to one consumer of that queue; queues are
///   isolated from each other.
/// - A subscription never holds more than `prefetch` unsettled deliveries.
/// - A delivery nacked, or dropped without being settled, is delivered again
///   with `attempt` one higher; once `attempt` reached the queue's
///   `max_attempts`, it goes to [`dead_letter_queue`] instead, with the
///   headers of [`policy`] (reason, cause, queue, attempts, time), the same
///   on every backend.
/// - `close` ends every subscription stream and makes later publishes fail
///   with [`crate::Error::Closed`]; deliveries already handed out can still be
///   settled. A non-persistent backend first waits (bounded) until its queues
///   are empty and settled, so that accepted work is not lost.
/// - The operator's methods ([`queue_stats`](Self::queue_stats),
///   [`peek_dead`](Self::peek_dead), [`purge_dead`](Self::purge_dead)) take
///   a declared queue's name and answer [`crate::Error::NotFound`] for a
///   queue the broker does not have; a backend without them answers
///   [`crate::Error::Unsupported`].
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Create (or confirm) queues and their bindings, and their dead-letter queues.
    async fn declare(&self, queues: &[QueueSpec]) -> Result<()>;

    /// Publish one message, routed by `envelope.event`.
    async fn publish(&self, envelope: Envelope) -> Result<()>;

    /// Start consuming a queue.
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream>;

    /// `Ok` while the backend is connected and usable.
    async fn ready(&self) -> Result<()>;

    /// Stop consuming and publishing (see the contract).
    async fn close(&self) -> Result<()>;

    /// Depth and consumers of `queue`, and the depth of its dead-letter queue.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        Err(unsupported("queue stats", queue))
    }

    /// Up to `limit` messages from the head of `queue`'s dead-letter queue,
    /// oldest first, left where they are (headers of [`policy`] included).
    async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let _ = limit;
        Err(unsupported("peeking dead letters", queue))
    }

    /// Remove every message waiting in `queue`'s dead-letter queue; returns
    /// how many were removed.
    async fn purge_dead(&self, queue: &str) -> Result<u64> {
        Err(unsupported("purging dead letters", queue))
    }
}

fn unsupported(what: &str, queue: &str) -> crate::Error {
    crate::Error::Unsupported(format!(
        "this broker does not support {what} (queue {queue:?})"
    ))
}

/// Settles one delivery on the backend. Implemented by broker adapters.
///
/// Dropping an implementation without calling one of its methods must make
/// the message available again (redelivery).
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message is done with.
    async fn ack(self: Box<Self>) -> Result<()>;
    /// Deliver again after `delay`, or dead-letter once attempts are used up.
    async fn nack(self: Box<Self>, delay: Duration, reason: String) -> Result<()>;
    /// Move to the dead-letter queue now.
    async fn dead_letter(self: Box<Self>, reason: String) -> Result<()>;
}

/// One received message. Settle it exactly once with [`ack`](Self::ack),
/// [`nack`](Self::nack) or [`dead_letter`](Self::dead_letter); dropping it
/// unsettled means redelivery.
pub struct Delivery {
    envelope: Envelope,
    acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.envelope.id)
            .field("event", &self.envelope.event)
            .field("job_id", &self.envelope.job_id)
            .field("attempt", &self.envelope.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Pair a received envelope with its acker.
    pub fn new(envelope: Envelope, acker: Box<dyn Acker>) -> Self {
        Self { envelope, acker }
    }

    /// The message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Delivery attempt, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The message is done with.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Deliver again after `delay` (or dead-letter when out of attempts).
    pub async fn nack(self, delay: Duration, reason: impl Into<String>) -> Result<()> {
        self.acker.nack(delay, reason.into()).await
    }

    /// Move to the dead-letter queue with `reason`.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<()> {
        self.acker.dead_letter(reason.into()).await
    }
}

/// Whether topic `pattern` matches `key` (`*` = one word, `#` = zero or more).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("image.submitted", "image.submitted"));
        assert!(!topic_matches("image.submitted", "image.failed"));
        assert!(topic_matches("image.*", "image.failed"));
        assert!(!topic_matches("image.*", "image.failed.x"));
        assert!(topic_matches("#", "image.failed"));
        assert!(topic_matches("#", "a"));
        assert!(topic_matches("image.#", "image"));
        assert!(topic_matches("image.#", "image.a.b"));
        assert!(topic_matches("#.failed", "image.failed"));
        assert!(topic_matches("*.*.c", "a.b.c"));
        assert!(!topic_matches("a.#.c", "a.b.d"));
    }
}
