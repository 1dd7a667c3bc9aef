//! In-process broker: topic routing into named queues, no encoding.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::broker::policy::{self, DeadCause, Disposition};
use crate::broker::{
    Acker, Broker, Capabilities, Delivery, DeliveryStream, QueueSpec, QueueStats, Subscription,
    dead_letter_queue, topic_matches,
};
use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// A broker living in this process: fast, not persistent.
///
/// Envelopes are passed as values (their parts are shared `Bytes`), so no
/// frame is ever encoded. On [`Broker::close`] it waits up to the drain
/// timeout for its queues to empty, because nothing outlives the process.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    closed: AtomicBool,
    /// Woken whenever a queue gets a message or a delivery is settled.
    changed: Notify,
    config: MemoryBrokerConfig,
}

/// Limits of a [`MemoryBroker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBrokerConfig {
    /// How long `close` waits for the queues to drain.
    pub drain_timeout: Duration,
    /// Messages a queue holds (waiting plus unsettled) before `publish`
    /// waits for room: the backpressure that keeps memory bounded when a
    /// consumer falls behind.
    pub max_depth: usize,
    /// How long `publish` waits for room before failing with `Unavailable`.
    pub publish_timeout: Duration,
}

impl Default for MemoryBrokerConfig {
    /// Drain 30 s, 1024 messages per queue, publish waits up to 30 s.
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            max_depth: 1024,
            publish_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
}

struct Queue {
    patterns: Vec<String>,
    max_attempts: u32,
    /// Whether the queue takes the messages' parts (`QueueSpec::parts`).
    parts: bool,
    ready: VecDeque<Envelope>,
    /// Deliveries handed out and not settled, plus delayed retries.
    outstanding: usize,
    /// Subscriptions open on the queue.
    consumers: usize,
}

impl Queue {
    fn new(patterns: Vec<String>, max_attempts: u32) -> Self {
        Self {
            patterns,
            max_attempts,
            parts: true,
            ready: VecDeque::new(),
            outstanding: 0,
            consumers: 0,
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker with the default limits.
    pub fn new() -> Self {
        Self::with_config(MemoryBrokerConfig::default())
    }

    /// A broker whose `close` waits up to `drain_timeout` for its queues to drain.
    pub fn with_drain_timeout(drain_timeout: Duration) -> Self {
        Self::with_config(MemoryBrokerConfig {
            drain_timeout,
            ..MemoryBrokerConfig::default()
        })
    }

    /// A broker with `config`.
    pub fn with_config(config: MemoryBrokerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                closed: AtomicBool::new(false),
                changed: Notify::new(),
                config,
            }),
        }
    }

    /// A broker for `memory://[?max_depth=N]`, draining for `drain_timeout`
    /// at `close`.
    pub fn from_url(url: &str, drain_timeout: Duration) -> Result<Self> {
        let mut u = crate::urls::BackendUrl::parse(url)?;
        let mut config = MemoryBrokerConfig {
            drain_timeout,
            ..MemoryBrokerConfig::default()
        };
        if let Some(depth) = u.take_parsed::<usize>("max_depth")? {
            if depth == 0 {
                return Err(Error::Config(format!(
                    "memory broker URL {u}: max_depth must be at least 1"
                )));
            }
            config.max_depth = depth;
        }
        u.reject_remaining(&["max_depth"])?;
        Ok(Self::with_config(config))
    }

    /// Messages waiting in `queue` plus deliveries not yet settled.
    pub fn depth(&self, queue: &str) -> usize {
        let state = self.inner.lock();
        state
            .queues
            .get(queue)
            .map_or(0, |q| q.ready.len() + q.outstanding)
    }

    fn is_idle(&self) -> bool {
        let state = self.inner.lock();
        state
            .queues
            .iter()
            .filter(|(name, _)| !name.ends_with(".dead"))
            .all(|(_, q)| q.ready.is_empty() && q.outstanding == 0)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding
        // it; the queues are still consistent (every update is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, queue: &str, envelope: Envelope, front: bool) {
        let mut state = self.lock();
        let q = state
            .queues
            .entry(queue.to_string())
            .or_insert_with(|| Queue::new(Vec::new(), u32::MAX));
        if front {
            q.ready.push_front(envelope);
        } else {
            q.ready.push_back(envelope);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn settle(&self, queue: &str) {
        let mut state = self.lock();
        if let Some(q) = state.queues.get_mut(queue) {
            q.outstanding = q.outstanding.saturating_sub(1);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn max_attempts(&self, queue: &str) -> u32 {
        self.lock()
            .queues
            .get(queue)
            .map_or(u32::MAX, |q| q.max_attempts)
    }

    /// Carry out what the delivery policy decided for an unsettled
    /// delivery of `queue`.
    fn dispose(self: &Arc<Self>, queue: String, disposition: Disposition) {
        match disposition {
            Disposition::DeadLetter { envelope } => {
                self.push(&dead_letter_queue(&queue), envelope, false);
                self.settle(&queue);
            }
            Disposition::Retry { envelope, delay } if delay.is_zero() => {
                // At the head, as the broker gave it; but a dead letter put
                // back (a replay skipping it) goes behind the others.
                let front = !queue.ends_with(".dead");
                self.push(&queue, envelope, front);
                self.settle(&queue);
            }
            Disposition::Retry { envelope, delay } => {
                // Stays outstanding while delayed, so a drain waits for it.
                let inner = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.push(&queue, envelope, false);
                    inner.settle(&queue);
                });
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, true, true, None)
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        for spec in queues {
            if spec.name.is_empty() {
                return Err(Error::invalid("queue name is empty"));
            }
        }
        let mut state = self.inner.lock();
        for spec in queues {
            let q = state
                .queues
                .entry(spec.name.clone())
                .or_insert_with(|| Queue::new(Vec::new(), spec.max_attempts));
            q.max_attempts = spec.max_attempts;
            q.parts = spec.parts;
            for p in &spec.patterns {
                if !q.patterns.contains(p) {
                    q.patterns.push(p.clone());
                }
            }
            state
                .queues
                .entry(dead_letter_queue(&spec.name))
                .or_insert_with(|| Queue::new(Vec::new(), u32::MAX));
        }
        Ok(())
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.config.publish_timeout;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("memory broker is closed".into()));
            }
            let full = {
                let mut state = self.inner.lock();
                let targets: Vec<String> = state
                    .queues
                    .iter()
                    .filter(|(_, q)| q.patterns.iter().any(|p| topic_matches(p, &envelope.event)))
                    .map(|(name, _)| name.clone())
                    .collect();
                if targets.is_empty() {
                    return Err(Error::NotFound(format!(
                        "no queue is bound to routing key {:?}",
                        envelope.event
                    )));
                }
                let max = self.inner.config.max_depth;
                let full = targets.iter().find(|name| {
                    state
                        .queues
                        .get(*name)
                        .is_some_and(|q| q.ready.len() + q.outstanding >= max)
                });
                match full {
                    Some(name) => name.clone(),
                    None => {
                        for name in &targets {
                            if let Some(q) = state.queues.get_mut(name) {
                                let mut copy = if q.parts {
                                    envelope.clone()
                                } else {
                                    envelope.without_parts()
                                };
                                copy.attempt = 1;
                                q.ready.push_back(copy);
                            }
                        }
                        drop(state);
                        self.inner.changed.notify_waiters();
                        return Ok(());
                    }
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::Unavailable(format!(
                    "queue {full:?} is full ({} messages) and did not drain within {:?}",
                    self.inner.config.max_depth, self.inner.config.publish_timeout
                )));
            }
        }
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if !self.inner.lock().queues.contains_key(&subscription.queue) {
            return Err(Error::NotFound(format!(
                "queue {:?} is not declared",
                subscription.queue
            )));
        }
        if let Some(q) = self.inner.lock().queues.get_mut(&subscription.queue) {
            q.consumers += 1;
        }
        let consumer = Consumer {
            inner: Arc::clone(&self.inner),
            queue: subscription.queue,
            permits: Arc::new(Semaphore::new(subscription.prefetch)),
        };
        Ok(Box::pin(futures::stream::unfold(
            consumer,
            |c| async move {
                let delivery = c.next().await?;
                Some((Ok(delivery), c))
            },
        )))
    }

    async fn ready(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("memory broker is closed".into()));
        }
        Ok(())
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let state = self.inner.lock();
        let q = state.queues.get(queue).ok_or_else(|| not_declared(queue))?;
        let dead = state
            .queues
            .get(&dead_letter_queue(queue))
            .map_or(0, |d| d.ready.len() + d.outstanding);
        Ok(QueueStats::new(
            (q.ready.len() + q.outstanding) as u64,
            Some(q.consumers as u64),
            dead as u64,
        ))
    }

    async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let state = self.inner.lock();
        let dead = state
            .queues
            .get(&dead_letter_queue(queue))
            .ok_or_else(|| not_declared(queue))?;
        Ok(dead.ready.iter().take(limit).cloned().collect())
    }

    async fn purge_dead(&self, queue: &str) -> Result<u64> {
        let mut state = self.inner.lock();
        let dead = state
            .queues
            .get_mut(&dead_letter_queue(queue))
            .ok_or_else(|| not_declared(queue))?;
        let n = dead.ready.len() as u64;
        dead.ready.clear();
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(n)
    }

    async fn close(&self) -> Result<()> {
        let drained = tokio::time::timeout(self.inner.config.drain_timeout, async {
            loop {
                let changed = self.inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.is_idle() {
                    return;
                }
                changed.await;
            }
        })
        .await;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.changed.notify_waiters();
        if drained.is_err() {
            let state = self.inner.lock();
            let left: usize = state
                .queues
                .values()
                .map(|q| q.ready.len() + q.outstanding)
                .sum();
            tracing::warn!(
                left,
                "memory broker closed before its queues drained; those messages are lost"
            );
        }
        Ok(())
    }
}

fn not_declared(queue: &str) -> Error {
    Error::NotFound(format!("queue {queue:?} is not declared"))
}

struct Consumer {
    inner: Arc<Inner>,
    queue: String,
    permits: Arc<Semaphore>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(q) = self.inner.lock().queues.get_mut(&self.queue) {
            q.consumers = q.consumers.saturating_sub(1);
        }
    }
}

impl Consumer {
    async fn next(&self) -> Option<Delivery> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.closed.load(Ordering::Acquire) {
                return None;
            }
            let popped = {
                let mut state = self.inner.lock();
                let q = state.queues.get_mut(&self.queue)?;
                let env = q.ready.pop_front();
                if env.is_some() {
                    q.outstanding += 1;
                }
                env
            };
            if let Some(envelope) = popped {
                let acker = MemoryAcker {
                    inner: Arc::clone(&self.inner),
                    queue: self.queue.clone(),
                    envelope: Some(envelope.clone()),
                    _permit: permit,
                };
                return Some(Delivery::new(envelope, Box::new(acker)));
            }
            changed.await;
        }
    }
}

struct MemoryAcker {
    inner: Arc<Inner>,
    queue: String,
    /// `Some` until settled; what `Drop` puts back.
    envelope: Option<Envelope>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.envelope = None;
        self.inner.settle(&self.queue);
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Duration, reason: String) -> Result<()> {
        if let Some(env) = self.envelope.take() {
            let max = self.inner.max_attempts(&self.queue);
            let d = policy::nacked(&self.queue, max, env, delay, &reason);
            self.inner.dispose(self.queue.clone(), d);
        }
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<()> {
        if let Some(env) = self.envelope.take() {
            let envelope = policy::dead_letter(&self.queue, env, &reason, DeadCause::Rejected);
            self.inner
                .dispose(self.queue.clone(), Disposition::DeadLetter { envelope });
        }
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(env) = self.envelope.take() {
            let max = self.inner.max_attempts(&self.queue);
            let d = policy::unsettled(&self.queue, max, env);
            self.inner.dispose(self.queue.clone(), d);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use futures::StreamExt;
    use uuid::Uuid;

    #[tokio::test]
    async fn a_full_queue_makes_publish_wait_until_there_is_room() {
        let broker = MemoryBroker::with_config(MemoryBrokerConfig {
            max_depth: 2,
            publish_timeout: Duration::from_millis(300),
            ..MemoryBrokerConfig::default()
        });
        broker
            .declare(&[QueueSpec::new("q", &["k"], 3)])
            .await
            .unwrap();
        let msg = || Envelope::new("k", Uuid::now_v7(), "t");
        broker.publish(msg()).await.unwrap();
        broker.publish(msg()).await.unwrap();
        let err = broker.publish(msg()).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("full"), "{err}");

        // A waiting publish goes through as soon as a consumer settles one.
        let waiting = tokio::spawn({
            let b = broker.clone();
            async move { b.publish(msg()).await }
        });
        let mut s = broker.subscribe(Subscription::new("q", 1)).await.unwrap();
        s.next().await.unwrap().unwrap().ack().await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(broker.depth("q"), 2);
    }
}
