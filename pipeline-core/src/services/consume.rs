//! The two ways the roles consume a queue: one delivery at a time with a
//! bounded number in flight, or in batches of whatever is waiting.

use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery, Subscription};
use crate::envelope::headers;
use crate::error::{Error, Result};

/// Consume `queue`, handling up to `prefetch` deliveries at once, until
/// `shutdown` resolves or the broker ends the stream; in-flight ones finish.
pub(crate) async fn consume_concurrently<H, F>(
    broker: &dyn Broker,
    queue: &str,
    prefetch: usize,
    shutdown: impl Future<Output = ()> + Send,
    handle: H,
) -> Result<()>
where
    H: Fn(Delivery) -> F,
    F: Future<Output = ()>,
{
    let prefetch = prefetch.max(1);
    let stream = broker.subscribe(Subscription::new(queue, prefetch)).await?;
    stream
        .take_until(shutdown)
        .for_each_concurrent(prefetch, |item| {
            let handled = item.map(&handle);
            async move {
                match handled {
                    Ok(f) => f.await,
                    Err(e) => tracing::warn!(queue, error = %e, "broker error while consuming"),
                }
            }
        })
        .await;
    Ok(())
}

/// A delivery turned into a record, or the reason it cannot be.
pub(crate) type Parsed<T> = std::result::Result<T, String>;

/// How a batch consumer settles what it cannot handle.
#[derive(Clone, Copy)]
pub(crate) struct Settling<'a> {
    /// Backoff of a nacked delivery.
    pub retry: Backoff,
    /// The delivery whose failure is retryable is given up (dead-lettered)
    /// on this attempt instead of nacked.
    pub max_attempts: u32,
    /// Event announcing, with the reason, each delivery given up (before
    /// it is dead-lettered), so readers learn that the job went no further.
    pub announce: Option<(&'a dyn Broker, &'static str)>,
}

impl Settling<'_> {
    /// Announce `d` as given up (when set), then dead-letter it.
    async fn give_up(&self, queue: &str, d: Delivery, reason: String) {
        tracing::warn!(queue, job_id = %d.envelope().job_id, attempt = d.attempt(), %reason, "giving the message up (dead-lettering it)");
        if let Some((broker, event)) = self.announce {
            let mut note = d
                .envelope()
                .follow_up(event)
                .with_header(
                    headers::ERROR_CODE,
                    event.rsplit('.').next().unwrap_or(event),
                )
                .with_header(headers::ERROR, reason.clone())
                .with_header(headers::ATTEMPTS, d.attempt().to_string());
            for stale in [headers::WORKER, headers::DURATION_MS, headers::ATTEMPT] {
                note.headers.remove(stale);
            }
            if let Err(e) = broker.publish(note).await {
                tracing::warn!(queue, error = %e, "announcing a message given up failed");
            }
        }
        if let Err(e) = d.dead_letter(reason).await {
            tracing::warn!(queue, error = %e, "dead-letter failed; the message will come back");
        }
    }
}

/// Consume `queue` in batches of up to `batch` waiting deliveries. Each
/// delivery is parsed (unparseable ones are dead-lettered); the records are
/// handed to `save` together and acked after it succeeds.
///
/// A failure is retried in place with backoff (250 ms doubling to 5 s, jittered)
/// while the deliveries stay unacked: as long as `ready` fails (the store
/// is down), whatever the error, or the store says it is full
/// ([`Error::StorageFull`]), for as long as it takes; another retryable
/// failure while the store answers `ready`, for at most
/// [`MAX_HOLD`], after which the batch is nacked with the retry policy's
/// delay (or given up on its last attempt, see [`Settling`]). A permanent
/// failure is retried record by record so one bad record cannot hold back
/// the others. At shutdown a held batch is nacked.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume_batches<T, P, S, F, R, RF>(
    broker: &dyn Broker,
    queue: &str,
    batch: usize,
    settling: Settling<'_>,
    shutdown: impl Future<Output = ()> + Send,
    parse: P,
    save: S,
    ready: R,
) -> Result<()>
where
    T: Clone + Send,
    P: Fn(&Delivery) -> Parsed<T>,
    S: Fn(Vec<T>) -> F,
    F: Future<Output = Result<()>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<()>>,
{
    let batch = batch.max(1);
    let shutdown = Box::pin(shutdown).shared();
    let stream = broker
        .subscribe(Subscription::new(queue, batch * 2))
        .await?;
    let chunks = stream.take_until(shutdown.clone()).ready_chunks(batch);
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        let mut records = Vec::with_capacity(chunk.len());
        let mut deliveries = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Ok(d) => match parse(&d) {
                    Ok(r) => {
                        records.push(r);
                        deliveries.push(d);
                    }
                    Err(reason) => {
                        settling
                            .give_up(queue, d, format!("unusable message: {reason}"))
                            .await
                    }
                },
                Err(e) => {
                    tracing::warn!(queue, error = %e, "broker reported an error while consuming")
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        for d in &deliveries {
            crate::telemetry::redelivery(queue, d.attempt());
        }
        let (count, saving) = (records.len(), tokio::time::Instant::now());
        let spans = record_spans(queue, &deliveries);
        match save_holding(queue, &records, &save, &ready, shutdown.clone()).await {
            Ok(()) => {
                record_batch(queue, count, saving.elapsed());
                saved(queue, &deliveries, &spans);
                settle_all(queue, deliveries, None, settling).await
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(queue, error = %e, count = deliveries.len(), "batch not saved; handing it back to the broker");
                for span in &spans {
                    crate::trace::failed(span, &format!("not saved: {e}"));
                }
                settle_all(queue, deliveries, Some(e), settling).await;
            }
            Err(e) => {
                tracing::warn!(queue, error = %e, "batch refused; saving one by one");
                for ((record, d), span) in records.into_iter().zip(deliveries).zip(spans) {
                    let saving = tokio::time::Instant::now();
                    match save(vec![record]).await {
                        Ok(()) => {
                            record_batch(queue, 1, saving.elapsed());
                            saved(queue, std::slice::from_ref(&d), std::slice::from_ref(&span));
                            settle_all(queue, vec![d], None, settling).await
                        }
                        Err(e) if e.is_retryable() => {
                            crate::trace::failed(&span, &format!("not saved: {e}"));
                            settle_all(queue, vec![d], Some(e), settling).await
                        }
                        Err(e) => {
                            crate::trace::failed(&span, &format!("refused by the store: {e}"));
                            settling
                                .give_up(queue, d, format!("refused by the store: {e}"))
                                .await
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// One span per record of a batch being saved, continuing its job's trace
/// (they end when the batch is settled).
fn record_spans(queue: &str, deliveries: &[Delivery]) -> Vec<tracing::Span> {
    let (role, stage) = if queue == super::queues::SAVE2DB {
        ("save2db", "archive")
    } else {
        ("activity", "activity")
    };
    deliveries
        .iter()
        .map(|d| crate::trace::reader_span(role, stage, d.envelope()))
        .collect()
}

/// After a batch is committed: the upload-to-archive time of each job
/// (save2db), and one debug line per record in its job's span.
fn saved(queue: &str, deliveries: &[Delivery], spans: &[tracing::Span]) {
    if queue == super::queues::SAVE2DB {
        for d in deliveries {
            if let Some(t) = crate::telemetry::since_upload(d.envelope()) {
                metrics::histogram!(crate::telemetry::ARCHIVED_SECONDS).record(t.as_secs_f64());
            }
        }
    }
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for (d, span) in deliveries.iter().zip(spans) {
        let env = d.envelope();
        span.in_scope(|| tracing::debug!(queue, event = %env.event, "record saved"));
    }
}

/// Count a saved batch: its records, its size and its time.
fn record_batch(queue: &str, records: usize, took: Duration) {
    use crate::telemetry::{ARCHIVE_BATCH_RECORDS, ARCHIVE_BATCH_SECONDS, ARCHIVED};
    let queue = queue.to_string();
    metrics::counter!(ARCHIVED, "queue" => queue.clone()).increment(records as u64);
    metrics::histogram!(ARCHIVE_BATCH_SECONDS, "queue" => queue.clone()).record(took.as_secs_f64());
    metrics::histogram!(ARCHIVE_BATCH_RECORDS, "queue" => queue).record(records as f64);
}

/// Longest a batch is retried in place while the store says it is ready
/// but saving keeps failing with a retryable error.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(60);

/// Pauses between tries of a held batch.
const HOLD_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).with_jitter();

/// Save `records`, retrying retryable failures in place (see
/// [`consume_batches`]). Returns the last error when giving up.
async fn save_holding<T, S, F, R, RF, D>(
    queue: &str,
    records: &[T],
    save: &S,
    ready: &R,
    shutdown: D,
) -> Result<()>
where
    D: Future<Output = ()> + Clone,
    T: Clone,
    S: Fn(Vec<T>) -> F,
    F: Future<Output = Result<()>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<()>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = HOLD_BACKOFF.start();
    loop {
        let e = match save(records.to_vec()).await {
            Ok(()) => {
                if started.elapsed() > Duration::from_secs(1) {
                    tracing::info!(
                        queue,
                        held_ms = started.elapsed().as_millis() as u64,
                        "batch saved after the store came back"
                    );
                }
                return Ok(());
            }
            Err(e) => e,
        };
        // While the store is down, any error is a symptom of the outage
        // (drivers do not always say so): hold, never dead-letter.
        let down = ready().await.is_err();
        // A full store is held like a down one: room is made by an
        // operator, however long that takes.
        let full = matches!(e, Error::StorageFull { .. });
        if !down && !full && (!e.is_retryable() || started.elapsed() >= MAX_HOLD) {
            return Err(e);
        }
        let delay = backoff.next_delay();
        tracing::warn!(queue, error = %e, store_down = down, store_full = full, retry_in_ms = delay.as_millis() as u64, count = records.len(), "saving failed; holding the batch (unacked) and retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.clone() => return Err(e),
        }
    }
}

/// Ack every delivery, or, when `error` is set, nack them with backoff
/// (give up those on their last attempt).
async fn settle_all(
    queue: &str,
    deliveries: Vec<Delivery>,
    error: Option<Error>,
    settling: Settling<'_>,
) {
    let results = futures::future::join_all(deliveries.into_iter().map(|d| {
        let error = error.as_ref().map(ToString::to_string);
        async move {
            match error {
                None => d.ack().await,
                Some(reason) if d.attempt() >= settling.max_attempts => {
                    let reason = format!("gave up after {} attempts: {reason}", d.attempt());
                    settling.give_up(queue, d, reason).await;
                    Ok(())
                }
                Some(reason) => {
                    let delay = settling.retry.delay(d.attempt());
                    d.nack(delay, reason).await
                }
            }
        }
    }))
    .await;
    for r in results {
        if let Err(e) = r {
            tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Save `failures` times with `error`, then succeed; the store answers
    /// `ready` throughout.
    async fn hold(error: fn() -> Error, failures: u32) -> (Result<()>, u32) {
        let calls = AtomicU32::new(0);
        let save = |_: Vec<u8>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < failures { Err(error()) } else { Ok(()) } }
        };
        let ready = || async { Ok(()) };
        let r = save_holding("q", &[1u8], &save, &ready, std::future::pending::<()>()).await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_is_held_past_the_hold_limit() {
        let full = || Error::StorageFull {
            backend: "test",
            message: "database or disk is full".into(),
        };
        // 40 tries at up to 5 s apart: well past MAX_HOLD.
        let started = tokio::time::Instant::now();
        let (r, calls) = hold(full, 40).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls, 41);
        assert!(started.elapsed() > MAX_HOLD, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn another_retryable_failure_is_held_for_the_hold_limit_only() {
        let flaky = || Error::backend("test", "deadlock", true);
        let (r, calls) = hold(flaky, 1000).await;
        assert!(r.is_err());
        assert!(calls < 1000, "{calls}");
    }
}
