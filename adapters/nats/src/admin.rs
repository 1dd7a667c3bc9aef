//! The operator's view of a queue: its consumer's counts, and its dead
//! letters read from the stream by subject (peek) or purged by subject.

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use pipeline_core::broker::{QueueStats, dead_letter_queue, policy};
use pipeline_core::{Envelope, Error, Result, wire};

use crate::{Inner, nats_error};

impl Inner {
    /// Waiting plus delivered-and-unacked messages of `queue`'s consumer.
    async fn depth(&self, stream: &Stream, queue: &str) -> Result<u64> {
        let info = stream
            .consumer_info(Self::consumer_name(queue))
            .await
            .map_err(|e| nats_error(&format!("read queue {queue}"), e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    pub(crate) async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.max_attempts(queue).await?;
        let stream = self.stream().await?;
        let messages = self.depth(&stream, queue).await?;
        let dead = self.depth(&stream, &dead_letter_queue(queue)).await?;
        // A pull consumer has no count of the processes pulling from it.
        Ok(QueueStats::new(messages, None, dead))
    }

    pub(crate) async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.max_attempts(queue).await?;
        let stream = self.stream().await?;
        let subject = self.subject(&dead_letter_queue(queue));
        let mut out = Vec::new();
        let mut from = 1;
        while out.len() < limit {
            let got = stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let message = match got {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => break,
                Err(e) => return Err(nats_error("read a dead letter", e)),
            };
            from = message.sequence + 1;
            let frame = message.payload;
            out.push(
                wire::decode(frame.clone()).unwrap_or_else(|e| policy::malformed(queue, frame, &e)),
            );
        }
        Ok(out)
    }

    pub(crate) async fn purge_dead(&self, queue: &str) -> Result<u64> {
        self.max_attempts(queue).await?;
        let stream = self.stream().await?;
        let purged = stream
            .purge()
            .filter(self.subject(&dead_letter_queue(queue)))
            .await
            .map_err(|e| nats_error("purge dead letters", e))?;
        if !purged.success {
            return Err(Error::Unavailable(
                "NATS: the purge of dead letters did not succeed".into(),
            ));
        }
        Ok(purged.purged)
    }
}
