//! Turning lapin deliveries into pipeline deliveries, and settling them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use lapin::{Channel, Consumer};
use pipeline_core::broker::policy::{self, DeadCause, Disposition};
use pipeline_core::broker::{Acker, Delivery};
use pipeline_core::{Envelope, Error, Result, wire};

use crate::acks::{AckBook, AckOutcome};
use crate::{Inner, RECONNECT_BACKOFF, RPC_TIMEOUT, bounded};

pub(crate) struct ConsumerState {
    pub inner: Arc<Inner>,
    pub full: String,
    pub prefetch: u16,
    pub channel: Channel,
    pub consumer: Consumer,
    /// The link the consumer lives on.
    pub generation: u64,
    /// Whether the queue takes the messages' parts: RabbitMQ's exchange
    /// routes whole messages, so a queue declared without them has them
    /// dropped here.
    pub parts: bool,
    /// The channel's unsettled deliveries (acks sent together).
    pub acks: Arc<AckBook>,
}

impl ConsumerState {
    /// The next delivery for the caller; malformed frames and broker
    /// redeliveries are dealt with here and never reach it.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            // lapin does not always wake a consumer whose connection died:
            // watch the link too.
            let lost = link_lost(Arc::clone(&self.inner), self.generation);
            let next = tokio::select! {
                next = self.consumer.next() => Some(next),
                () = lost => None,
            };
            let Some(next) = next else {
                tracing::warn!(queue = %self.full, "connection lost; subscribing again");
                self.resubscribe().await?;
                continue;
            };
            if next.is_none() && self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            let mut d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.full, error = %e, "consumer interrupted; subscribing again");
                    self.resubscribe().await?;
                    continue;
                }
                // Cancelled by the server (queue deleted, node gone...)
                // while messages are still wanted: subscribe again.
                None => {
                    tracing::warn!(queue = %self.full, "consumer cancelled by the server; subscribing again");
                    self.resubscribe().await?;
                    continue;
                }
            };
            self.acks.register(d.delivery_tag);
            let frame = Bytes::from(std::mem::take(&mut d.data));
            let envelope = match wire::decode(frame.clone()) {
                Ok(env) if !self.parts && !env.parts.is_empty() => env.without_parts(),
                Ok(env) => env,
                Err(e) => {
                    let env = policy::malformed(self.inner.short(&self.full), frame, &e);
                    tracing::warn!(queue = %self.full, error = %e, "dead-lettering a malformed message");
                    self.forward(
                        d.delivery_tag,
                        &d.acker,
                        self.inner.send_dead(&self.full, &env),
                    )
                    .await;
                    continue;
                }
            };
            // A dead-letter queue's redeliveries (a peek, a replay that
            // stopped) are handed out as they are: nothing consumes a dead
            // letter but an operator, so no attempt is counted.
            if d.redelivered && !self.full.ends_with(".dead") {
                // The server redelivered it (a consumer died, a channel
                // closed, or it was dropped unsettled): count it as an
                // attempt, so a message that kills its consumer cannot loop.
                let max = self.inner.max_attempts_of(&self.full);
                let short = self.inner.short(&self.full);
                let d2 = policy::unsettled(short, max, envelope);
                if let Disposition::DeadLetter { envelope } = &d2 {
                    tracing::warn!(queue = %self.full, job_id = %envelope.job_id, "dead-lettering a message its consumers never settled");
                }
                self.forward(d.delivery_tag, &d.acker, self.inner.dispose(&self.full, d2))
                    .await;
                continue;
            }
            let acker = RabbitAcker {
                _channel: self.channel.clone(),
                acker: Some(d.acker),
                tag: d.delivery_tag,
                acks: Arc::clone(&self.acks),
                inner: Arc::clone(&self.inner),
                full: self.full.clone(),
                envelope: Some(envelope.clone()),
            };
            return Some(Ok(Delivery::new(envelope, Box::new(acker))));
        }
    }

    /// A new channel and consumer, retried with backoff until it works or
    /// the broker is closed (`None`).
    async fn resubscribe(&mut self) -> Option<()> {
        let mut backoff = RECONNECT_BACKOFF.start();
        loop {
            if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            match self.inner.open_consumer(&self.full, self.prefetch).await {
                Ok((channel, consumer, generation)) => {
                    self.channel = channel;
                    self.consumer = consumer;
                    self.generation = generation;
                    self.acks = Arc::default();
                    return Some(());
                }
                Err(e) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(queue = %self.full, error = %e, ?pause, "subscribing again failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Ack the original once its replacement is confirmed; otherwise hand
    /// it back to the queue (it comes round again).
    async fn forward(
        &self,
        tag: u64,
        acker: &lapin::Acker,
        sent: impl std::future::Future<Output = Result<()>>,
    ) {
        match sent.await {
            Ok(()) => match self.acks.ack(tag, acker.clone()).await {
                AckOutcome::Sent => {}
                AckOutcome::Stale => {
                    tracing::warn!(queue = %self.full, "ack after forwarding failed: the channel was recovered")
                }
                AckOutcome::Failed(e) => {
                    tracing::warn!(queue = %self.full, error = %e, "ack after forwarding failed")
                }
            },
            Err(e) => {
                tracing::warn!(queue = %self.full, error = %e, "forwarding failed; handing the message back");
                requeue(acker).await;
                self.acks.forget(tag);
            }
        }
    }
}

impl Drop for ConsumerState {
    /// The subscription ended (its stream was dropped or closed): cancel the
    /// consumer on the server, and hand back what it had prefetched but
    /// never handed out, so another subscription gets it now rather than
    /// when this process exits. Deliveries handed out keep their channel
    /// open until they are settled.
    fn drop(&mut self) {
        let (channel, mut consumer) = (self.channel.clone(), self.consumer.clone());
        let tag = consumer.tag();
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, t)| *t != tag);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
            if !matches!(bounded("cancel a consumer", cancel).await, Ok(Ok(()))) {
                // The channel is gone: the server returned everything.
                return;
            }
            // After the cancel, the consumer yields what it still buffers, then ends.
            while let Ok(Some(Ok(d))) = tokio::time::timeout(RPC_TIMEOUT, consumer.next()).await {
                requeue_now(&d.acker).await;
            }
        });
    }
}

/// Give a delivery back to its queue at once.
async fn requeue_now(acker: &lapin::Acker) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if !matches!(bounded("requeue", acker.nack(options)).await, Ok(Ok(_))) {
        tracing::debug!("requeue failed; the channel will return the message");
    }
}

/// Resolves once link `generation` of `inner` is dead or replaced.
async fn link_lost(inner: Arc<Inner>, generation: u64) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let current = inner.links.current();
        if !current.is_some_and(|l| l.generation == generation && l.alive()) {
            return;
        }
    }
}

/// Give a delivery back to its queue (after a short pause, so a failing
/// send does not spin).
async fn requeue(acker: &lapin::Acker) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if !matches!(bounded("requeue", acker.nack(options)).await, Ok(Ok(_))) {
        // The channel is gone: the server returns the message by itself.
        tracing::debug!("requeue failed; the channel will return the message");
    }
}

struct RabbitAcker {
    /// Keeps the channel open while this delivery is unsettled (lapin closes
    /// a channel when its last handle goes, e.g. when the stream ends at
    /// shutdown while jobs are still finishing).
    _channel: Channel,
    acker: Option<lapin::Acker>,
    /// Its delivery tag on the channel.
    tag: u64,
    /// The channel's unsettled deliveries.
    acks: Arc<AckBook>,
    inner: Arc<Inner>,
    full: String,
    /// `Some` until settled.
    envelope: Option<Envelope>,
}

impl RabbitAcker {
    async fn ack_original(&mut self) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        match self.acks.ack(self.tag, acker).await {
            AckOutcome::Sent => Ok(()),
            AckOutcome::Stale => Err(Error::Unavailable(format!(
                "stale delivery from {:?}: its channel was recovered, so RabbitMQ will deliver it again",
                self.full
            ))),
            AckOutcome::Failed(e) => {
                Err(Error::Unavailable(format!("ack on {:?}: {e}", self.full)))
            }
        }
    }

    /// Ack the original if its copy was sent; otherwise hand it back to the
    /// queue so nothing is lost, and report the failure.
    async fn settle_after(&mut self, sent: Result<()>) -> Result<()> {
        match sent {
            Ok(()) => self.ack_original().await,
            Err(e) => {
                if let Some(acker) = self.acker.take() {
                    requeue(&acker).await;
                    self.acks.forget(self.tag);
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.envelope = None;
        self.ack_original().await
    }

    async fn nack(mut self: Box<Self>, delay: Duration, reason: String) -> Result<()> {
        let Some(env) = self.envelope.take() else {
            return Ok(());
        };
        let max = self.inner.max_attempts_of(&self.full);
        let disposition = policy::nacked(self.inner.short(&self.full), max, env, delay, &reason);
        let sent = self.inner.dispose(&self.full, disposition).await;
        self.settle_after(sent).await
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<()> {
        let Some(env) = self.envelope.take() else {
            return Ok(());
        };
        let short = self.inner.short(&self.full);
        let env = policy::dead_letter(short, env, &reason, DeadCause::Rejected);
        let sent = self.inner.send_dead(&self.full, &env).await;
        self.settle_after(sent).await
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if self.envelope.is_none() {
            return;
        }
        // Dropped unsettled: hand it back now rather than when the channel closes.
        if let (Some(acker), Ok(rt)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            let (acks, tag) = (Arc::clone(&self.acks), self.tag);
            rt.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                if !matches!(bounded("requeue", acker.nack(requeue)).await, Ok(Ok(_))) {
                    tracing::debug!(
                        "requeue of a dropped delivery failed; the channel will return it"
                    );
                }
                acks.forget(tag);
            });
        }
    }
}
