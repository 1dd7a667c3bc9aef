//! The operator's view of a queue: depth, consumers, and its dead letters
//! (peek and purge), each on a channel of its own (a missing queue closes
//! the channel that asked).

use lapin::Channel;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use pipeline_core::broker::{QueueStats, dead_letter_queue, policy};
use pipeline_core::{Envelope, Error, Result, wire};

use crate::{Inner, RETRY_DELAYS_MS, bounded, unavailable};

/// AMQP reply code of a queue that does not exist.
const NOT_FOUND: u16 = 404;

fn queue_error(what: &str, queue: &str, e: &lapin::Error) -> Error {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == NOT_FOUND
    {
        return Error::NotFound(format!("queue {queue:?} is not declared"));
    }
    unavailable(&format!("{what} {queue:?}"), e)
}

impl Inner {
    async fn admin_channel(&self) -> Result<Channel> {
        let link = self.link().await?;
        bounded("open a channel", link.conn.create_channel())
            .await?
            .map_err(|e| unavailable("open a channel", &e))
    }

    /// Ready messages and consumers of the queue called `full`, from a
    /// passive declare.
    async fn counts(&self, full: &str) -> Result<(u64, u64)> {
        let ch = self.admin_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = bounded(
            "inspect a queue",
            ch.queue_declare(full.into(), options, FieldTable::default()),
        )
        .await?;
        let _ = bounded("close a channel", ch.close(200, "done".into())).await;
        let q = declared.map_err(|e| queue_error("inspect queue", full, &e))?;
        Ok((u64::from(q.message_count()), u64::from(q.consumer_count())))
    }

    /// Ready messages of `queue` and of its retry queues, its consumers,
    /// and its dead letters.
    pub(crate) async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let full = self.full(queue);
        let (mut messages, consumers) = self.counts(&full).await?;
        for ms in RETRY_DELAYS_MS {
            match self.counts(&format!("{full}.retry.{ms}")).await {
                Ok((n, _)) => messages += n,
                // A queue declared by an older version has fewer retry queues.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (dead, _) = self.counts(&self.full(&dead_letter_queue(queue))).await?;
        Ok(QueueStats::new(messages, Some(consumers), dead))
    }

    /// Up to `limit` dead letters of `queue`, fetched unacked on a channel
    /// that is then closed, which puts them back.
    pub(crate) async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let dead = self.full(&dead_letter_queue(queue));
        let ch = self.admin_channel().await?;
        let mut peeked = Vec::new();
        let mut failure = None;
        while peeked.len() < limit {
            let got = bounded(
                "fetch a dead letter",
                ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await;
            match got {
                Ok(Ok(Some(message))) => {
                    let frame = bytes::Bytes::from(message.delivery.data);
                    peeked.push(
                        wire::decode(frame.clone())
                            .unwrap_or_else(|e| policy::malformed(queue, frame, &e)),
                    );
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    failure = Some(queue_error("peek", &dead, &e));
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Closing the channel returns every message it fetched.
        let _ = bounded("close a channel", ch.close(200, "peeked".into())).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(peeked),
        }
    }

    /// Remove the ready messages of `queue`'s dead-letter queue.
    pub(crate) async fn purge_dead(&self, queue: &str) -> Result<u64> {
        let dead = self.full(&dead_letter_queue(queue));
        let ch = self.admin_channel().await?;
        let purged = bounded(
            "purge a queue",
            ch.queue_purge(dead.as_str().into(), QueuePurgeOptions::default()),
        )
        .await?;
        let _ = bounded("close a channel", ch.close(200, "purged".into())).await;
        Ok(u64::from(
            purged.map_err(|e| queue_error("purge", &dead, &e))?,
        ))
    }
}
