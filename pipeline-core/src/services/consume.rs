//! The two ways the roles consume a queue: one delivery at a time with a
//! bounded number in flight, or in batches of whatever is waiting.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery, Subscription};
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

/// Consume `queue` in batches of up to `batch` waiting deliveries. Each
/// delivery is parsed (unparseable ones are dead-lettered); the records are
/// handed to `save` together and acked after it succeeds.
///
/// A failure is retried in place with backoff (250 ms doubling to 5 s, jittered)
/// while the deliveries stay unacked: as long as `ready` fails (the store
/// is down), whatever the error, for as long as it takes; a retryable
/// failure while the store answers `ready`, for at most
/// [`MAX_HOLD`], after which the batch is nacked with the retry policy's
/// delay. A permanent failure is retried record by record so one bad
/// record cannot hold back the others. At shutdown a held batch is nacked.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume_batches<T, P, S, F, R, RF>(
    broker: &dyn Broker,
    queue: &str,
    batch: usize,
    retry: Backoff,
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
                        tracing::warn!(queue, job_id = %d.envelope().job_id, %reason, "dead-lettering unusable message");
                        if let Err(e) = d.dead_letter(reason).await {
                            tracing::warn!(queue, error = %e, "dead-letter failed; the message will come back");
                        }
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
        match save_holding(queue, &records, &save, &ready, shutdown.clone()).await {
            Ok(()) => settle_all(deliveries, None, retry).await,
            Err(e) if e.is_retryable() => {
                tracing::warn!(queue, error = %e, count = deliveries.len(), "batch not saved; handing it back to the broker");
                settle_all(deliveries, Some(e), retry).await;
            }
            Err(e) => {
                tracing::warn!(queue, error = %e, "batch refused; saving one by one");
                for (record, d) in records.into_iter().zip(deliveries) {
                    match save(vec![record]).await {
                        Ok(()) => settle_all(vec![d], None, retry).await,
                        Err(e) if e.is_retryable() => settle_all(vec![d], Some(e), retry).await,
                        Err(e) => {
                            if let Err(e2) =
                                d.dead_letter(format!("refused by the store: {e}")).await
                            {
                                tracing::warn!(queue, error = %e2, "dead-letter failed");
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
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
    let started = Instant::now();
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
        if !down && (!e.is_retryable() || started.elapsed() >= MAX_HOLD) {
            return Err(e);
        }
        let delay = backoff.next_delay();
        tracing::warn!(queue, error = %e, store_down = down, retry_in_ms = delay.as_millis() as u64, count = records.len(), "saving failed; holding the batch (unacked) and retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.clone() => return Err(e),
        }
    }
}

/// Ack every delivery, or nack them with backoff when `error` is set.
async fn settle_all(deliveries: Vec<Delivery>, error: Option<Error>, retry: Backoff) {
    let results = futures::future::join_all(deliveries.into_iter().map(|d| {
        let error = error.as_ref().map(ToString::to_string);
        async move {
            match error {
                None => d.ack().await,
                Some(reason) => {
                    let delay = retry.delay(d.attempt());
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
