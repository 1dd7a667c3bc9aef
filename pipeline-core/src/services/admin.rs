//! What an operator asks of the pipeline's queues: an overview (depth,
//! consumers, dead letters), the dead letters of one queue with their
//! reason, and purging them. Replaying is [`super::replay_dead`].

use std::collections::BTreeMap;

use uuid::Uuid;

use super::queues;
use crate::broker::Broker;
use crate::envelope::{Envelope, headers};
use crate::error::{Error, Result};

/// The queues of the standard topology, in the order a job crosses them.
pub const QUEUES: [&str; 4] = [
    queues::TRANSFORM,
    queues::API_RESULTS,
    queues::SAVE2DB,
    queues::ACTIVITY,
];

/// Most dead letters one peek returns.
pub const MAX_PEEK: usize = 1000;

/// `Ok(name)` if `name` is one of the pipeline's queues, else an
/// `InvalidInput` error listing them.
pub fn pipeline_queue(name: &str) -> Result<&'static str> {
    QUEUES.iter().copied().find(|q| *q == name).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown queue {name:?}; the pipeline's queues: {}",
            QUEUES.join(", ")
        ))
    })
}

/// One queue of [`overview`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueOverview {
    /// Queue name, without the namespace.
    pub queue: String,
    /// Messages in the queue, as the backend counts them.
    pub messages: u64,
    /// Consumers attached, where the backend tells.
    pub consumers: Option<u64>,
    /// Messages in its dead-letter queue.
    pub dead_letters: u64,
}

/// Depth, consumers and dead letters of every queue of the pipeline.
pub async fn overview(broker: &dyn Broker) -> Result<Vec<QueueOverview>> {
    let mut out = Vec::with_capacity(QUEUES.len());
    for queue in QUEUES {
        let s = broker.queue_stats(queue).await?;
        out.push(QueueOverview {
            queue: queue.to_string(),
            messages: s.messages,
            consumers: s.consumers,
            dead_letters: s.dead_letters,
        });
    }
    Ok(out)
}

/// A part of a dead letter: its name, type and size (not its bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartSummary {
    /// Part name, for example `original`.
    pub name: String,
    /// Media type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// A dead letter as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Message id (one per publish).
    pub id: Uuid,
    /// Event, which is also its routing key.
    pub event: String,
    /// The job it belongs to.
    pub job_id: Uuid,
    /// Tenant owning the job.
    pub tenant: String,
    /// Why it was dead-lettered, for a person.
    pub reason: Option<String>,
    /// `rejected`, `exhausted`, `abandoned` or `malformed`.
    pub cause: Option<String>,
    /// Deliveries made before it was dead-lettered.
    pub attempts: Option<u32>,
    /// Unix milliseconds of the decision.
    pub dead_at_ms: Option<i64>,
    /// Unix milliseconds when the message was created.
    pub created_at_ms: i64,
    /// Every header, the dead-letter ones included.
    pub headers: BTreeMap<String, String>,
    /// Its parts, without their bytes.
    pub parts: Vec<PartSummary>,
}

impl From<&Envelope> for DeadLetter {
    fn from(e: &Envelope) -> Self {
        let h = |k: &str| e.headers.get(k).cloned();
        Self {
            id: e.id,
            event: e.event.clone(),
            job_id: e.job_id,
            tenant: e.tenant.clone(),
            reason: h(headers::DEAD_LETTER_REASON),
            cause: h(headers::DEAD_LETTER_CAUSE),
            attempts: h(headers::DEAD_LETTER_ATTEMPTS).and_then(|v| v.parse().ok()),
            dead_at_ms: h(headers::DEAD_LETTER_AT_MS).and_then(|v| v.parse().ok()),
            created_at_ms: e.created_at_ms,
            headers: e.headers.clone(),
            parts: e
                .parts
                .iter()
                .map(|p| PartSummary {
                    name: p.name.clone(),
                    content_type: p.content_type.clone(),
                    bytes: p.data.len() as u64,
                })
                .collect(),
        }
    }
}

/// Up to `limit` (at most [`MAX_PEEK`]) dead letters of `queue`, oldest
/// first, left in place.
pub async fn peek_dead(broker: &dyn Broker, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
    let queue = pipeline_queue(queue)?;
    let peeked = broker.peek_dead(queue, limit.min(MAX_PEEK)).await?;
    Ok(peeked.iter().map(DeadLetter::from).collect())
}

/// Remove the dead letters of `queue`; how many were removed.
pub async fn purge_dead(broker: &dyn Broker, queue: &str) -> Result<u64> {
    broker.purge_dead(pipeline_queue(queue)?).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::broker::Subscription;
    use crate::envelope::events;
    use crate::memory::MemoryBroker;
    use futures::StreamExt;

    #[tokio::test]
    async fn overview_peek_and_purge_on_the_memory_broker() {
        let broker = MemoryBroker::new();
        broker.declare(&crate::services::topology(1)).await.unwrap();
        for _ in 0..3 {
            let e = Envelope::new(events::SUBMITTED, Uuid::now_v7(), "t");
            broker.publish(e).await.unwrap();
        }
        let mut s = broker
            .subscribe(Subscription::new(queues::TRANSFORM, 1))
            .await
            .unwrap();
        let d = s.next().await.unwrap().unwrap();
        let job = d.envelope().job_id;
        d.dead_letter("cannot be done").await.unwrap();
        let o = overview(&broker).await.unwrap();
        assert_eq!(o.len(), 4);
        assert_eq!(
            (o[0].messages, o[0].consumers, o[0].dead_letters),
            (2, Some(1), 1)
        );
        // Every submitted event also reached the activity queue.
        assert_eq!((o[3].messages, o[3].consumers), (3, Some(0)));
        drop(s);
        assert_eq!(overview(&broker).await.unwrap()[0].consumers, Some(0));

        let dead = peek_dead(&broker, "transform", 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].job_id, job);
        assert_eq!(dead[0].reason.as_deref(), Some("cannot be done"));
        assert_eq!(dead[0].cause.as_deref(), Some("rejected"));
        assert_eq!(dead[0].attempts, Some(1));
        // A peek leaves it there.
        assert_eq!(peek_dead(&broker, "transform", 10).await.unwrap().len(), 1);
        assert!(matches!(
            peek_dead(&broker, "nope", 1).await,
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(purge_dead(&broker, "transform").await.unwrap(), 1);
        assert_eq!(purge_dead(&broker, "transform").await.unwrap(), 0);
        assert!(
            peek_dead(&broker, "transform", 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
