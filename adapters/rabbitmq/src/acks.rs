//! Consumer acks of one channel, sent together where they can be.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::options::BasicAckOptions;
use tokio::sync::oneshot;

use crate::bounded;

/// How an ack ended.
#[derive(Debug, Clone)]
pub(crate) enum AckOutcome {
    /// Sent.
    Sent,
    /// Not sent: the channel was closed or replaced, so RabbitMQ delivers
    /// the message again.
    Stale,
    /// Sending it failed.
    Failed(String),
}

/// An ack waiting to be sent, and who waits for it.
struct Waiting<A> {
    acker: A,
    done: oneshot::Sender<AckOutcome>,
}

/// One ack frame to send: `multiple` settles every delivery up to the
/// acker's tag.
struct Frame<A> {
    acker: A,
    multiple: bool,
    waiters: Vec<oneshot::Sender<AckOutcome>>,
}

struct Book<A> {
    /// Every delivery of the channel not settled yet, by delivery tag;
    /// `Some` once its ack is wanted.
    open: BTreeMap<u64, Option<Waiting<A>>>,
    /// Whether a task is sending acks (the others leave theirs to it).
    sending: bool,
}

impl<A> Default for Book<A> {
    fn default() -> Self {
        Self {
            open: BTreeMap::new(),
            sending: false,
        }
    }
}

impl<A> Book<A> {
    /// The frames that settle every wanted ack: one multiple ack for the
    /// run of wanted acks at the oldest open delivery, then one ack each
    /// for those after a delivery still running (a multiple ack would
    /// settle that one too).
    fn take(&mut self) -> Vec<Frame<A>> {
        let mut frames = Vec::new();
        let mut run = Vec::new();
        let mut last = None;
        while let Some(entry) = self.open.first_entry() {
            if entry.get().is_none() {
                break;
            }
            if let Some(w) = entry.remove() {
                last = Some(w.acker);
                run.push(w.done);
            }
        }
        if let Some(acker) = last {
            frames.push(Frame {
                acker,
                multiple: run.len() > 1,
                waiters: run,
            });
        }
        let later: Vec<u64> = self
            .open
            .iter()
            .filter_map(|(tag, w)| w.as_ref().map(|_| *tag))
            .collect();
        for tag in later {
            if let Some(Some(w)) = self.open.remove(&tag) {
                frames.push(Frame {
                    acker: w.acker,
                    multiple: false,
                    waiters: vec![w.done],
                });
            }
        }
        frames
    }
}

/// The unsettled deliveries of one consumer channel, so that acks that
/// arrive together go out as one frame.
///
/// RabbitMQ's CPU per delivery drops by about half when a consumer acks a
/// run of deliveries with one multiple ack instead of one ack each
/// (`scripts/rabbitmq-ack-cost.py`). A multiple ack settles every
/// delivery up to its tag, so one is sent only for a run that starts at
/// the oldest unsettled delivery and holds only deliveries whose ack is
/// wanted. No ack waits for another job: acks that arrive while others
/// are being sent are sent next, together, and an ack after a delivery
/// still running goes out alone. Every delivery of the channel is
/// [registered](AckBook::register) when it arrives, and one settled
/// otherwise (nack, requeue) is [forgotten](AckBook::forget) only once
/// that went out, so no multiple ack covers it.
#[derive(Default)]
pub(crate) struct AckBook {
    book: Mutex<Book<lapin::Acker>>,
}

impl AckBook {
    fn lock(&self) -> MutexGuard<'_, Book<lapin::Acker>> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivery `tag` arrived on the channel.
    pub(crate) fn register(&self, tag: u64) {
        self.lock().open.insert(tag, None);
    }

    /// Delivery `tag` was settled without an ack (its nack went out or
    /// failed with the channel).
    pub(crate) fn forget(&self, tag: u64) {
        self.lock().open.remove(&tag);
    }

    /// Ack delivery `tag` with `acker`, together with the acks wanted at
    /// the same time; resolves once the frame that settles it went out.
    pub(crate) async fn ack(self: &Arc<Self>, tag: u64, acker: lapin::Acker) -> AckOutcome {
        let (done, outcome) = oneshot::channel();
        let lead = {
            let mut book = self.lock();
            match book.open.get_mut(&tag) {
                Some(slot) => {
                    *slot = Some(Waiting { acker, done });
                    Ok(!std::mem::replace(&mut book.sending, true))
                }
                None => Err(acker),
            }
        };
        let lead = match lead {
            Ok(lead) => lead,
            // Not registered (cannot happen): acked alone.
            Err(acker) => return send(&acker, false).await,
        };
        if lead {
            // On its own task: the caller being cancelled must not strand
            // the acks the others left to it.
            let book = Arc::clone(self);
            tokio::spawn(async move { book.send_all().await });
        }
        outcome
            .await
            .unwrap_or_else(|_| AckOutcome::Failed("the ack was dropped unsent".into()))
    }

    /// Send wanted acks until none is left.
    async fn send_all(&self) {
        loop {
            let frames = {
                let mut book = self.lock();
                let frames = book.take();
                if frames.is_empty() {
                    book.sending = false;
                    return;
                }
                frames
            };
            for frame in frames {
                let outcome = send(&frame.acker, frame.multiple).await;
                for waiter in frame.waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
        }
    }
}

async fn send(acker: &lapin::Acker, multiple: bool) -> AckOutcome {
    let options = BasicAckOptions { multiple };
    match bounded("ack", acker.ack(options)).await {
        Ok(Ok(true)) => AckOutcome::Sent,
        Ok(Ok(false)) => AckOutcome::Stale,
        Ok(Err(e)) => AckOutcome::Failed(e.to_string()),
        Err(e) => AckOutcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A book of `open` deliveries whose acks are wanted for `wanted`;
    /// the acker of each is its tag.
    fn book(open: &[u64], wanted: &[u64]) -> (Book<u64>, Vec<oneshot::Receiver<AckOutcome>>) {
        let mut book = Book::default();
        let mut receivers = Vec::new();
        for &tag in open {
            let slot = wanted.contains(&tag).then(|| {
                let (done, rx) = oneshot::channel();
                receivers.push(rx);
                Waiting { acker: tag, done }
            });
            book.open.insert(tag, slot);
        }
        (book, receivers)
    }

    fn frames(book: &mut Book<u64>) -> Vec<(u64, bool, usize)> {
        book.take()
            .into_iter()
            .map(|f| (f.acker, f.multiple, f.waiters.len()))
            .collect()
    }

    #[test]
    fn a_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let (mut b, _rx) = book(&[3, 4, 5, 6], &[3, 4, 5]);
        assert_eq!(frames(&mut b), vec![(5, true, 3)]);
        assert_eq!(b.open.keys().copied().collect::<Vec<_>>(), vec![6]);
        assert!(frames(&mut b).is_empty(), "6 is still running");
    }

    #[test]
    fn acks_after_a_running_delivery_go_one_by_one() {
        let (mut b, _rx) = book(&[1, 2, 3, 4, 5], &[1, 3, 5]);
        assert_eq!(
            frames(&mut b),
            vec![(1, false, 1), (3, false, 1), (5, false, 1)]
        );
        // The running ones stay, so a later multiple ack stops before them.
        assert_eq!(b.open.keys().copied().collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn nothing_is_sent_while_the_oldest_runs_and_none_is_wanted() {
        let (mut b, _rx) = book(&[7, 8], &[]);
        assert!(frames(&mut b).is_empty());
        let (mut empty, _) = book(&[], &[]);
        assert!(frames(&mut empty).is_empty());
    }
}
