//! The two ways the roles consume a queue: one delivery at a time with a
//! bounded number in flight, or in batches of whatever is waiting.

use std::future::Future;

use futures::StreamExt;

use super::RetryPolicy;
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
/// handed to `save` together and acked after it succeeds. A retryable
/// failure nacks the batch with backoff; a permanent one is retried record
/// by record so one bad record cannot hold back the others.
pub(crate) async fn consume_batches<T, P, S, F>(
    broker: &dyn Broker,
    queue: &str,
    batch: usize,
    retry: RetryPolicy,
    shutdown: impl Future<Output = ()> + Send,
    parse: P,
    save: S,
) -> Result<()>
where
    T: Clone + Send,
    P: Fn(&Delivery) -> Parsed<T>,
    S: Fn(Vec<T>) -> F,
    F: Future<Output = Result<()>>,
{
    let batch = batch.max(1);
    let stream = broker
        .subscribe(Subscription::new(queue, batch * 2))
        .await?;
    let chunks = stream.take_until(shutdown).ready_chunks(batch);
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
        match save(records.clone()).await {
            Ok(()) => settle_all(deliveries, None, retry).await,
            Err(e) if e.is_retryable() => {
                tracing::warn!(queue, error = %e, count = deliveries.len(), "batch not saved; will retry");
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

/// Ack every delivery, or nack them with backoff when `error` is set.
async fn settle_all(deliveries: Vec<Delivery>, error: Option<Error>, retry: RetryPolicy) {
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
