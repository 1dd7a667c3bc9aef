//! Consuming a stream through the consumer group, and settling deliveries.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    ClientLike, KeysInterface, LuaInterface, SortedSetsInterface, StreamsInterface,
};
use fred::types::Expiration;
use fred::types::Value;
use fred::types::streams::XReadResponse;
use pipeline_core::broker::policy::{self, DeadCause, Disposition};
use pipeline_core::broker::{Acker, Delivery, DeliveryStream, Subscription};
use pipeline_core::envelope::{Envelope, now_ms};
use pipeline_core::{Backoff, Result, wire};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{FIELD, GROUP, Inner, MIN_DELAY, new_client, redis_error};

/// Moves due delayed entries back to their stream, atomically.
const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, frame in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'f', frame)
  redis.call('ZREM', KEYS[1], frame)
end
return #due
"#;

/// A stream entry: its id and fields.
type Entry = (String, HashMap<String, Bytes>);

struct State {
    inner: Arc<Inner>,
    /// A client of its own: a blocking XREADGROUP stalls every other
    /// command on its connection.
    reader: fred::clients::Client,
    queue: String,
    stream: String,
    consumer: String,
    permits: Arc<Semaphore>,
    buffer: VecDeque<(String, Envelope)>,
    last_claim: tokio::time::Instant,
    last_liveness_check: tokio::time::Instant,
    /// When dead consumers' names were last looked for.
    last_forget: tokio::time::Instant,
    last_move: tokio::time::Instant,
    /// Keeps this consumer's heartbeat going; dropping it stops the
    /// heartbeat and removes the key.
    _alive: tokio::sync::oneshot::Sender<()>,
    /// Pauses after failed reads, reset by a good one.
    backoff: pipeline_core::backoff::Retrying,
}

/// Pauses between failed reads of a stream (Redis down or restarting).
const READ_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter();

pub(crate) async fn subscribe(inner: Arc<Inner>, sub: Subscription) -> Result<DeliveryStream> {
    let reader = new_client(&inner.config)?;
    reader
        .init()
        .await
        .map_err(|e| redis_error("connect a reader", e))?;
    // The process id tells operators (XINFO CONSUMERS) which process holds what.
    let consumer = format!("c-{}-{}", std::process::id(), uuid::Uuid::now_v7());
    // Alive before the first read, so no one takes this consumer's entries.
    let key = inner.alive_key(&sub.queue, &consumer);
    beat(&inner, &key).await?;
    let alive = heartbeat(Arc::clone(&inner), key);
    let state = State {
        stream: inner.stream(&sub.queue),
        consumer,
        _alive: alive,
        last_liveness_check: tokio::time::Instant::now(),
        last_forget: tokio::time::Instant::now(),
        queue: sub.queue,
        permits: Arc::new(Semaphore::new(sub.prefetch)),
        buffer: VecDeque::new(),
        last_claim: tokio::time::Instant::now(),
        last_move: tokio::time::Instant::now(),
        backoff: READ_BACKOFF.start(),
        inner,
        reader,
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
                let _ = self.reader.quit().await;
                return None;
            }
            if let Some((id, envelope)) = self.buffer.pop_front() {
                let acker = RedisAcker {
                    inner: Arc::clone(&self.inner),
                    queue: self.queue.clone(),
                    stream: self.stream.clone(),
                    id,
                    envelope: Some(envelope.clone()),
                    _permit: permit,
                };
                return Some(Ok(Delivery::new(envelope, Box::new(acker))));
            }
            // Due retries are moved at most every 200 ms, not before every read.
            if self.last_move.elapsed() >= Duration::from_millis(200) {
                self.last_move = tokio::time::Instant::now();
                if let Err(e) = self.move_due().await {
                    tracing::warn!(queue = %self.queue, error = %e, "moving delayed entries failed");
                }
            }
            if self.last_liveness_check.elapsed() >= self.inner.liveness / 3 {
                self.last_liveness_check = tokio::time::Instant::now();
                if let Err(e) = self.claim_from_dead().await {
                    tracing::warn!(queue = %self.queue, error = %e, "taking over the entries of dead consumers failed");
                }
            }
            if self.last_claim.elapsed() >= self.inner.claim_idle / 4 {
                self.last_claim = tokio::time::Instant::now();
                if let Err(e) = self.claim_abandoned().await {
                    tracing::warn!(queue = %self.queue, error = %e, "claiming abandoned entries failed");
                }
            }
            let count = (self.permits.available_permits() + 1) as u64;
            // A read that times out is a nil reply, which fred's typed
            // conversion refuses: take the raw value and treat nil as empty.
            let read: std::result::Result<XReadResponse<String, String, String, Bytes>, _> = self
                .reader
                .xreadgroup::<Value, _, _, _, _>(
                    GROUP,
                    self.consumer.as_str(),
                    Some(count),
                    Some(500),
                    false,
                    self.stream.as_str(),
                    ">",
                )
                .await
                .and_then(|v| {
                    if v.is_null() {
                        Ok(XReadResponse::default())
                    } else {
                        v.into_xread_response()
                    }
                });
            match read {
                Ok(response) => {
                    self.backoff.reset();
                    for (_, entries) in response {
                        for (id, fields) in entries {
                            self.accept(id, fields).await;
                        }
                    }
                }
                Err(e) if e.to_string().contains("NOGROUP") => {
                    // The server lost its data (restart without persistence).
                    tracing::warn!(queue = %self.queue, "the consumer group is gone (Redis lost its data?); recreating it");
                    if let Err(e) = self.inner.restore(&self.queue).await {
                        tracing::warn!(queue = %self.queue, error = %e, "recreating the consumer group failed; retrying");
                        self.backoff.wait().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "reading the stream failed; retrying");
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// Decode an entry into the buffer; a malformed one is dead-lettered.
    async fn accept(&mut self, id: String, mut fields: HashMap<String, Bytes>) {
        let frame = fields.remove(FIELD).unwrap_or_default();
        match wire::decode(frame.clone()) {
            Ok(env) => self.buffer.push_back((id, env)),
            Err(e) => {
                let env = policy::malformed(&self.queue, frame, &e);
                match self.inner.add_dead(&self.queue, &env).await {
                    Ok(()) => {
                        let _ = remove(&self.inner, &self.stream, &id).await;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "dead-lettering a malformed entry failed")
                    }
                }
            }
        }
    }

    /// Take over the entries of consumers whose heartbeat expired (their
    /// process died): within the liveness period of the death, whatever
    /// their entries' age. A live consumer keeps its entries however long
    /// its jobs take.
    async fn claim_from_dead(&mut self) -> Result<()> {
        let summary: Value = self
            .inner
            .client
            .xpending(self.stream.as_str(), GROUP, ())
            .await
            .map_err(|e| redis_error("XPENDING", e))?;
        for consumer in pending_consumers(summary) {
            if consumer == self.consumer {
                continue;
            }
            let key = self.inner.alive_key(&self.queue, &consumer);
            let alive: i64 = self
                .inner
                .client
                .exists(key)
                .await
                .map_err(|e| redis_error("EXISTS", e))?;
            if alive > 0 {
                continue;
            }
            // Entries it took at least a moment ago (a consumer writes its
            // heartbeat before its first read, so this only guards against
            // a clock race).
            let grace = CLAIM_GRACE.as_millis() as u64;
            // No more than this consumer can take on now.
            let wanted = (self.permits.available_permits() + 1) as u64;
            let pending: Vec<(String, String, u64, u64)> = self
                .inner
                .client
                .xpending(
                    self.stream.as_str(),
                    GROUP,
                    (grace, "-", "+", wanted, consumer.as_str()),
                )
                .await
                .map_err(|e| redis_error("XPENDING", e))?;
            let delivered: HashMap<String, u64> = pending
                .iter()
                .map(|(id, _, _, count)| (id.clone(), *count))
                .collect();
            let ids: Vec<String> = pending.into_iter().map(|(id, ..)| id).collect();
            if ids.is_empty() {
                // Its entries are younger than the grace: taken next round.
                // (Deleting the consumer now would drop them from the
                // group's pending list, and nobody would ever get them.)
                continue;
            }
            let claimed: Vec<Entry> = self
                .inner
                .client
                .xclaim_values(
                    self.stream.as_str(),
                    GROUP,
                    self.consumer.as_str(),
                    grace,
                    ids,
                    None,
                    None,
                    None,
                    false,
                    false,
                )
                .await
                .map_err(|e| redis_error("XCLAIM", e))?;
            tracing::warn!(queue = %self.queue, %consumer, entries = claimed.len(), "a consumer died; taking over its entries");
            self.adopt(claimed, &delivered).await?;
        }
        // Names of dead consumers only matter to the counts: looked for
        // once per FORGET_AFTER, not at every liveness check.
        if self.last_forget.elapsed() >= FORGET_AFTER {
            self.last_forget = tokio::time::Instant::now();
            self.forget_dead_consumers().await?;
        }
        Ok(())
    }

    /// Remove from the group the consumers that hold no entry, have no
    /// heartbeat and did nothing for [`FORGET_AFTER`]: what dead processes
    /// leave behind. One with entries is never removed (removing it would
    /// drop them from the pending list).
    async fn forget_dead_consumers(&mut self) -> Result<()> {
        let reply: Value = self
            .inner
            .client
            .xinfo_consumers(self.stream.as_str(), GROUP)
            .await
            .map_err(|e| redis_error("XINFO CONSUMERS", e))?;
        for record in crate::info_records(reply) {
            let field = |name: &str| crate::info_field(&record, name).and_then(Value::as_u64);
            let name = crate::info_field(&record, "name").and_then(|v| v.as_string());
            let (Some(name), Some(0), Some(idle)) = (name, field("pending"), field("idle")) else {
                continue;
            };
            if name == self.consumer || idle < FORGET_AFTER.as_millis() as u64 {
                continue;
            }
            let alive: i64 = self
                .inner
                .client
                .exists(self.inner.alive_key(&self.queue, &name))
                .await
                .map_err(|e| redis_error("EXISTS", e))?;
            if alive == 0 {
                let _: std::result::Result<i64, _> = self
                    .inner
                    .client
                    .xgroup_delconsumer(self.stream.as_str(), GROUP, name.as_str())
                    .await;
            }
        }
        Ok(())
    }

    /// Entries claimed from a dead consumer, handed out by this one next,
    /// in their place in the queue (not behind what is waiting). Their
    /// attempt is the frame's plus the deliveries Redis counted for the
    /// entry, so an entry that kills every consumer still ends in the
    /// dead-letter stream.
    async fn adopt(&mut self, claimed: Vec<Entry>, delivered: &HashMap<String, u64>) -> Result<()> {
        let max = self.inner.max_attempts(&self.queue);
        for (id, mut fields) in claimed.into_iter().rev() {
            let frame = fields.remove(FIELD).unwrap_or_default();
            let env = match wire::decode(frame.clone()) {
                Ok(mut env) => {
                    let before = delivered.get(&id).copied().unwrap_or(1).max(1);
                    let made = u64::from(env.attempt) + before - 1;
                    env.attempt = u32::try_from(made).unwrap_or(u32::MAX);
                    env
                }
                Err(e) => {
                    let env = policy::malformed(&self.queue, frame, &e);
                    self.inner.add_dead(&self.queue, &env).await?;
                    remove(&self.inner, &self.stream, &id).await?;
                    continue;
                }
            };
            match policy::unsettled(&self.queue, max, env) {
                Disposition::Retry { envelope, .. } => {
                    tracing::warn!(queue = %self.queue, job_id = %envelope.job_id, attempt = envelope.attempt, "took over an entry of a dead consumer");
                    self.buffer.push_front((id, envelope));
                }
                dead => {
                    dispose(&self.inner, &self.queue, dead).await?;
                    remove(&self.inner, &self.stream, &id).await?;
                }
            }
        }
        Ok(())
    }

    /// Take over entries another consumer left pending for `claim_idle`
    /// (it died without a heartbeat): each counts as an attempt, so an entry
    /// that kills its consumers ends in the dead-letter stream.
    async fn claim_abandoned(&mut self) -> Result<()> {
        let idle = self.inner.claim_idle.as_millis() as u64;
        let (_, claimed): (String, Vec<Entry>) = self
            .inner
            .client
            .xautoclaim_values(
                self.stream.as_str(),
                GROUP,
                self.consumer.as_str(),
                idle,
                "0-0",
                Some(100),
                false,
            )
            .await
            .map_err(|e| redis_error("XAUTOCLAIM", e))?;
        self.take_over(claimed).await
    }

    /// Entries taken from a dead consumer: delivered again (one attempt
    /// more, or dead-lettered by the policy), then removed here.
    async fn take_over(&mut self, claimed: Vec<Entry>) -> Result<()> {
        for (id, mut fields) in claimed {
            let frame = fields.remove(FIELD).unwrap_or_default();
            let handled = match wire::decode(frame.clone()) {
                Ok(env) => {
                    tracing::warn!(queue = %self.queue, job_id = %env.job_id, "took over an entry of a dead consumer");
                    let max = self.inner.max_attempts(&self.queue);
                    dispose(
                        &self.inner,
                        &self.queue,
                        policy::unsettled(&self.queue, max, env),
                    )
                    .await
                }
                Err(e) => {
                    let env = policy::malformed(&self.queue, frame, &e);
                    self.inner.add_dead(&self.queue, &env).await
                }
            };
            if handled.is_ok() {
                remove(&self.inner, &self.stream, &id).await?;
            }
        }
        Ok(())
    }

    async fn move_due(&self) -> Result<()> {
        let keys = vec![self.inner.delayed(&self.queue), self.stream.clone()];
        let _: i64 = self
            .inner
            .client
            .eval(MOVE_DUE, keys, vec![now_ms().to_string()])
            .await
            .map_err(|e| redis_error("move delayed entries", e))?;
        Ok(())
    }
}

/// How long an entry must have been pending before it can be taken from a
/// dead consumer.
const CLAIM_GRACE: Duration = Duration::from_millis(500);

/// A consumer with no entry, no heartbeat and nothing done for this long
/// is removed from the group.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Refresh the heartbeat `key` for the liveness period.
async fn beat(inner: &Inner, key: &str) -> Result<()> {
    let ttl = i64::try_from(inner.liveness.as_millis()).unwrap_or(i64::MAX);
    let _: Value = inner
        .client
        .set(key, "1", Some(Expiration::PX(ttl)), None, false)
        .await
        .map_err(|e| redis_error("SET heartbeat", e))?;
    Ok(())
}

/// Refresh `key` three times per liveness period until the returned sender
/// is dropped (the subscription ended), then remove it. A killed process
/// stops beating and its key expires.
fn heartbeat(inner: Arc<Inner>, key: String) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(inner.liveness / 3) => {}
            }
            if let Err(e) = beat(&inner, &key).await {
                tracing::warn!(%key, error = %e, "heartbeat failed");
            }
        }
        let _: std::result::Result<i64, _> = inner.client.del(&key).await;
    });
    tx
}

/// The consumers with pending entries, from an XPENDING summary
/// (`[count, first, last, [[consumer, count], ...]]`).
fn pending_consumers(summary: Value) -> Vec<String> {
    let Value::Array(parts) = summary else {
        return Vec::new();
    };
    let Some(Value::Array(consumers)) = parts.into_iter().nth(3) else {
        return Vec::new();
    };
    consumers
        .into_iter()
        .filter_map(|c| match c {
            Value::Array(pair) => pair.into_iter().next().and_then(|v| v.into_string()),
            _ => None,
        })
        .collect()
}

/// XACK then XDEL: a settled entry leaves the stream, so streams hold only
/// what is waiting or in flight and never lose a pending entry to trimming.
async fn remove(inner: &Inner, stream: &str, id: &str) -> Result<()> {
    let _: i64 = inner
        .client
        .xack(stream, GROUP, id)
        .await
        .map_err(|e| redis_error("XACK", e))?;
    let _: i64 = inner
        .client
        .xdel(stream, id)
        .await
        .map_err(|e| redis_error("XDEL", e))?;
    Ok(())
}

struct RedisAcker {
    inner: Arc<Inner>,
    queue: String,
    stream: String,
    id: String,
    envelope: Option<Envelope>,
    _permit: OwnedSemaphorePermit,
}

/// Carry out what the delivery policy decided for an entry of `queue`.
async fn dispose(inner: &Inner, queue: &str, disposition: Disposition) -> Result<()> {
    match disposition {
        Disposition::DeadLetter { envelope } => inner.add_dead(queue, &envelope).await,
        Disposition::Retry { envelope, delay } if delay < MIN_DELAY => {
            inner.add(queue, wire::encode(&envelope)?).await
        }
        Disposition::Retry { envelope, delay } => {
            let due = now_ms() + delay.as_millis() as i64;
            let _: i64 = inner
                .client
                .zadd(
                    inner.delayed(queue),
                    None,
                    None,
                    false,
                    false,
                    (due as f64, wire::encode(&envelope)?),
                )
                .await
                .map_err(|e| redis_error("ZADD", e))?;
            Ok(())
        }
    }
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.envelope = None;
        remove(&self.inner, &self.stream, &self.id).await
    }

    async fn nack(mut self: Box<Self>, delay: Duration, reason: String) -> Result<()> {
        let Some(env) = self.envelope.take() else {
            return Ok(());
        };
        let max = self.inner.max_attempts(&self.queue);
        let disposition = policy::nacked(&self.queue, max, env, delay, &reason);
        dispose(&self.inner, &self.queue, disposition).await?;
        remove(&self.inner, &self.stream, &self.id).await
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<()> {
        let Some(env) = self.envelope.take() else {
            return Ok(());
        };
        let env = policy::dead_letter(&self.queue, env, &reason, DeadCause::Rejected);
        self.inner.add_dead(&self.queue, &env).await?;
        remove(&self.inner, &self.stream, &self.id).await
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        let Some(env) = self.envelope.take() else {
            return;
        };
        let (inner, queue, stream, id) = (
            Arc::clone(&self.inner),
            self.queue.clone(),
            self.stream.clone(),
            self.id.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let max = inner.max_attempts(&queue);
                let done = dispose(&inner, &queue, policy::unsettled(&queue, max, env)).await;
                match done {
                    Ok(()) => {
                        let _ = remove(&inner, &stream, &id).await;
                    }
                    Err(e) => tracing::warn!(%queue, error = %e, "handing back a dropped delivery failed; it stays pending"),
                }
            });
        }
    }
}
