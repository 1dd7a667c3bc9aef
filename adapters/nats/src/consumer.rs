//! Consuming a queue through its durable pull consumer, and settling
//! deliveries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use futures::StreamExt;
use pipeline_core::broker::policy::{self, DeadCause, Disposition};
use pipeline_core::broker::{Acker, Delivery, DeliveryStream, Subscription, dead_letter_queue};
use pipeline_core::envelope::Envelope;
use pipeline_core::{Backoff, Result, wire};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Inner, nats_error};

/// Pauses between failed pulls (NATS down or restarting).
const PULL_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter();

/// Longest a pull waits for messages before the loop looks again (at
/// `close`, say).
const PULL_EXPIRES: Duration = Duration::from_millis(1000);

/// Longer than that, a pull is given up on the client's side.
const PULL_GRACE: Duration = Duration::from_millis(2000);

struct State {
    inner: Arc<Inner>,
    consumer: PullConsumer,
    queue: String,
    max_attempts: u32,
    permits: Arc<Semaphore>,
    /// Pulled, not handed out yet.
    buffer: VecDeque<jetstream::Message>,
    backoff: pipeline_core::backoff::Retrying,
}

impl Drop for State {
    /// Messages pulled but never handed out go back at once, not after
    /// the ack wait.
    fn drop(&mut self) {
        let buffered: Vec<jetstream::Message> = self.buffer.drain(..).collect();
        if buffered.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for m in buffered {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
            });
        }
    }
}

pub(crate) async fn subscribe(inner: Arc<Inner>, sub: Subscription) -> Result<DeliveryStream> {
    let max_attempts = inner.max_attempts(&sub.queue).await?;
    let consumer: PullConsumer = inner
        .stream()
        .await?
        .get_consumer(&Inner::consumer_name(&sub.queue))
        .await
        .map_err(|e| nats_error(&format!("open queue {}", sub.queue), e))?;
    let state = State {
        inner,
        consumer,
        queue: sub.queue,
        max_attempts,
        permits: Arc::new(Semaphore::new(sub.prefetch)),
        buffer: VecDeque::new(),
        backoff: PULL_BACKOFF.start(),
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        },
    )))
}

impl State {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(message) = self.buffer.pop_front() {
                if let Some((envelope, message)) = self.prepare(message).await {
                    return Some(Ok(self.delivery(envelope, message, permit)));
                }
                continue;
            }
            // At most as many as this subscription may still hold: what is
            // there now, or else a long poll for the next one (it returns
            // as soon as one arrives).
            let room = self.permits.available_permits() + 1;
            match self.pull(room, false).await {
                Ok(0) => {
                    if let Err(e) = self.pull(1, true).await {
                        self.pause(&e).await;
                    }
                }
                Ok(_) => {}
                Err(e) => self.pause(&e).await,
            }
        }
    }

    /// Pull up to `max` messages into the buffer: those waiting now, or
    /// (`wait`) the first to arrive within [`PULL_EXPIRES`]. How many came.
    async fn pull(&mut self, max: usize, wait: bool) -> std::result::Result<usize, String> {
        let batch = if wait {
            self.consumer
                .batch()
                .max_messages(max)
                .expires(PULL_EXPIRES)
                .messages()
                .await
        } else {
            self.consumer.fetch().max_messages(max).messages().await
        };
        let mut batch = batch.map_err(|e| e.to_string())?;
        let mut n = 0;
        // The server ends a pull by a status message; one lost with the
        // connection (a server restart) must not leave the pull waiting
        // for ever, so the wait is bounded here too.
        let deadline = tokio::time::Instant::now() + PULL_EXPIRES + PULL_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(Ok(m))) => {
                    self.buffer.push_back(m);
                    n += 1;
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(queue = %self.queue, error = %e, "pull ended early");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    if n == 0 {
                        return Err("the pull got no answer (connection lost?)".into());
                    }
                    break;
                }
            }
        }
        self.backoff.reset();
        Ok(n)
    }

    async fn pause(&mut self, error: &str) {
        let delay = self.backoff.next_delay();
        tracing::warn!(queue = %self.queue, %error, retry_in_ms = delay.as_millis() as u64, "pulling failed; retrying");
        tokio::time::sleep(delay).await;
    }

    /// The envelope of `message` with its attempt, or `None` when the
    /// policy moved it to the dead-letter queue (undecodable, or delivered
    /// too often without being settled).
    async fn prepare(&self, message: jetstream::Message) -> Option<(Envelope, jetstream::Message)> {
        let delivered = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1)
            .max(1);
        let mut envelope = match wire::decode(message.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                let dead = policy::malformed(&self.queue, message.payload.clone(), &e);
                self.bury(message, &dead).await;
                return None;
            }
        };
        envelope.attempt = envelope.attempt.saturating_add(delivered - 1);
        if envelope.attempt > self.max_attempts {
            // The delivery before this one was never settled.
            let mut previous = envelope;
            previous.attempt -= 1;
            match policy::unsettled(&self.queue, self.max_attempts, previous) {
                Disposition::DeadLetter { envelope } => {
                    self.bury(message, &envelope).await;
                    return None;
                }
                Disposition::Retry { envelope, .. } => return Some((envelope, message)),
            }
        }
        Some((envelope, message))
    }

    /// Publish `dead` to the dead-letter queue, then take `message` off.
    async fn bury(&self, message: jetstream::Message, dead: &Envelope) {
        let dlq = dead_letter_queue(&self.queue);
        match self.inner.publish_to(&dlq, dead).await {
            Ok(()) => {
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(queue = %self.queue, error = %e, "ack after dead-lettering failed; the message comes back");
                }
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "dead-lettering failed; the message comes back");
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
    }

    fn delivery(
        &self,
        envelope: Envelope,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
    ) -> Delivery {
        let progress = message.reply.clone().map(|reply| {
            let client = self.inner.client.clone();
            let every = self.inner.ack_wait / 3;
            // While held, the delivery is the holder's: a live worker's
            // long job is never handed to another one.
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if client.publish(reply.clone(), "+WPI".into()).await.is_err() {
                        return;
                    }
                }
            })
        });
        let acker = NatsAcker {
            inner: Arc::clone(&self.inner),
            queue: self.queue.clone(),
            max_attempts: self.max_attempts,
            envelope: envelope.clone(),
            message: Some(message),
            progress,
            _permit: permit,
        };
        Delivery::new(envelope, Box::new(acker))
    }
}

struct NatsAcker {
    inner: Arc<Inner>,
    queue: String,
    max_attempts: u32,
    envelope: Envelope,
    message: Option<jetstream::Message>,
    progress: Option<tokio::task::JoinHandle<()>>,
    _permit: OwnedSemaphorePermit,
}

impl NatsAcker {
    fn take(&mut self) -> Option<jetstream::Message> {
        if let Some(p) = self.progress.take() {
            p.abort();
        }
        self.message.take()
    }

    async fn bury(&mut self, dead: &Envelope) -> Result<()> {
        let Some(message) = self.take() else {
            return Ok(());
        };
        self.inner
            .publish_to(&dead_letter_queue(&self.queue), dead)
            .await?;
        message
            .double_ack()
            .await
            .map_err(|e| nats_error(&format!("ack on {}", self.queue), e))
    }
}

impl Drop for NatsAcker {
    /// Unsettled: back to the queue at once.
    fn drop(&mut self) {
        if let Some(message) = self.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let Some(message) = self.take() else {
            return Ok(());
        };
        message
            .double_ack()
            .await
            .map_err(|e| nats_error(&format!("ack on {}", self.queue), e))
    }

    async fn nack(mut self: Box<Self>, delay: Duration, reason: String) -> Result<()> {
        match policy::nacked(
            &self.queue,
            self.max_attempts,
            self.envelope.clone(),
            delay,
            &reason,
        ) {
            Disposition::Retry { delay, .. } => {
                let Some(message) = self.take() else {
                    return Ok(());
                };
                let kind = if delay < Duration::from_millis(1) {
                    AckKind::Nak(None)
                } else {
                    AckKind::Nak(Some(delay))
                };
                message
                    .ack_with(kind)
                    .await
                    .map_err(|e| nats_error(&format!("nak on {}", self.queue), e))
            }
            Disposition::DeadLetter { envelope } => self.bury(&envelope).await,
        }
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<()> {
        let dead = policy::dead_letter(
            &self.queue,
            self.envelope.clone(),
            &reason,
            DeadCause::Rejected,
        );
        self.bury(&dead).await
    }
}
