//! Replaying dead letters: after the cause is fixed (a database back from a
//! long outage, a plugin bug fixed), messages in `<queue>.dead` are sent
//! again.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::Envelope;
use crate::broker::{Broker, MALFORMED_EVENT, Subscription, dead_letter_queue, policy};
use crate::envelope::headers;
use crate::error::{Error, Result};

/// What [`replay_dead`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages published again (attempt 1, dead-letter headers removed).
    pub replayed: u64,
    /// Messages left in the dead-letter queue: undecodable frames kept for
    /// inspection, copies delivered without their parts (from a queue
    /// declared without parts), or ones whose publish failed.
    pub kept: u64,
}

/// Publish again, under their own routing key, up to `limit` messages of
/// `queue`'s dead-letter queue, and remove them from it once published.
/// Like every publish, a replayed message reaches every queue bound to its
/// event (consumers are idempotent, so the others ignore a repeat).
/// Undecodable frames (`pipeline.malformed`) stay. Stops when the dead
/// queue stays empty for `idle`, or when a message kept earlier in this
/// run comes round again.
pub async fn replay_dead(
    broker: &dyn Broker,
    queue: &str,
    limit: u64,
    idle: Duration,
) -> Result<ReplayReport> {
    replay_matching(broker, queue, limit, idle, |_| true).await
}

/// Like [`replay_dead`], for the dead letters of one job only; the others
/// stay (they are put back, possibly in another order).
pub async fn replay_dead_job(
    broker: &dyn Broker,
    queue: &str,
    job_id: Uuid,
    idle: Duration,
) -> Result<ReplayReport> {
    replay_matching(broker, queue, u64::MAX, idle, |e| e.job_id == job_id).await
}

async fn replay_matching(
    broker: &dyn Broker,
    queue: &str,
    limit: u64,
    idle: Duration,
    wanted: impl Fn(&Envelope) -> bool,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    // How many dead letters there are, where the broker tells: nothing to
    // wait for when there are none, and when to stop once all were seen.
    let total = match broker.queue_stats(queue).await {
        Ok(stats) if stats.dead_letters == 0 => return Ok(report),
        Ok(stats) => Some(stats.dead_letters),
        Err(Error::Unsupported(_)) => None,
        Err(e) => return Err(e),
    };
    // Bounds the messages handed back, in case the queue keeps changing.
    let mut budget = total.map_or(u64::MAX, |t| t.saturating_mul(4).saturating_add(64));
    let dead = dead_letter_queue(queue);
    let mut stream = broker.subscribe(Subscription::new(&dead, 16)).await?;
    let mut seen = HashSet::new();
    while report.replayed < limit && budget > 0 {
        budget -= 1;
        let Ok(Some(item)) = tokio::time::timeout(idle, stream.next()).await else {
            break;
        };
        let delivery = item?;
        let envelope = delivery.envelope().clone();
        if !seen.insert(envelope.id) {
            // One kept earlier in this run came round again: stop once
            // every dead letter was seen (or when the count is unknown).
            delivery.nack(Duration::ZERO, "kept by a replay").await?;
            if total.is_none_or(|t| seen.len() as u64 >= t) {
                break;
            }
            continue;
        }
        if !wanted(&envelope) {
            delivery
                .nack(Duration::ZERO, "not selected by a replay")
                .await?;
            continue;
        }
        if envelope.event == MALFORMED_EVENT {
            report.kept += 1;
            delivery
                .nack(Duration::ZERO, "an undecodable frame is not replayed")
                .await?;
            continue;
        }
        if envelope.parts.is_empty() && envelope.header(headers::PAYLOAD_BYTES).is_some() {
            // A copy without its parts (the activity log's): published
            // again, it would reach the queues that need the parts.
            report.kept += 1;
            delivery
                .nack(
                    Duration::ZERO,
                    "a copy without its parts is not published again",
                )
                .await?;
            continue;
        }
        match broker.publish(policy::revived(envelope)).await {
            Ok(()) => {
                report.replayed += 1;
                delivery.ack().await?;
            }
            Err(e) => {
                tracing::warn!(queue = %dead, error = %e, "replaying a dead letter failed; it stays");
                report.kept += 1;
                delivery.nack(Duration::ZERO, e.to_string()).await?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::QueueSpec;
    use crate::memory::MemoryBroker;

    #[tokio::test]
    async fn undecodable_frames_stay_and_the_rest_is_replayed() {
        let broker = MemoryBroker::new();
        broker
            .declare(&[QueueSpec::new("q", &["job", MALFORMED_EVENT], 1)])
            .await
            .unwrap();
        let job = Envelope::new("job", uuid::Uuid::now_v7(), "t");
        let bad = Envelope::new(MALFORMED_EVENT, uuid::Uuid::nil(), "");
        broker.publish(job.clone()).await.unwrap();
        broker.publish(bad.clone()).await.unwrap();
        let mut s = broker.subscribe(Subscription::new("q", 4)).await.unwrap();
        for _ in 0..2 {
            let d = s.next().await.unwrap().unwrap();
            d.dead_letter("boom").await.unwrap();
        }
        drop(s);
        let idle = Duration::from_millis(300);
        let r = replay_dead(&broker, "q", u64::MAX, idle).await.unwrap();
        assert_eq!((r.replayed, r.kept), (1, 1));
        assert_eq!(broker.depth("q"), 1, "the job is back");
        assert_eq!(broker.depth("q.dead"), 1, "the undecodable frame stayed");
        // A second run keeps it again and ends.
        let r = replay_dead(&broker, "q", u64::MAX, idle).await.unwrap();
        assert_eq!((r.replayed, r.kept), (0, 1));
        assert_eq!(broker.depth("q.dead"), 1);
        // One job's dead letters only.
        broker.purge_dead("q").await.unwrap();
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let e = Envelope::new("job", uuid::Uuid::now_v7(), "t");
            jobs.push(e.job_id);
            broker.publish(e).await.unwrap();
        }
        let mut s = broker.subscribe(Subscription::new("q", 4)).await.unwrap();
        // The one replayed earlier, then the three new ones.
        for _ in 0..4 {
            let d = s.next().await.unwrap().unwrap();
            d.dead_letter("boom").await.unwrap();
        }
        drop(s);
        let r = replay_dead_job(&broker, "q", jobs[1], idle).await.unwrap();
        assert_eq!((r.replayed, r.kept), (1, 0));
        assert_eq!(broker.depth("q"), 1);
        assert_eq!(broker.depth("q.dead"), 3, "the other jobs stayed");
        let mut s = broker.subscribe(Subscription::new("q", 1)).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().envelope().job_id, jobs[1]);
        // The limit is honoured.
        let r = replay_dead(&broker, "q", 0, idle).await.unwrap();
        assert_eq!(r, ReplayReport::default());
    }
}
