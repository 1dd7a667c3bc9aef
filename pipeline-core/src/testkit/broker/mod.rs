//! Cases every [`Broker`] passes.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use super::unique;
use crate::broker::{Broker, DeliveryStream, QueueSpec, Subscription};
use crate::envelope::{Envelope, Part};

mod flow;
mod routing;
mod settle;

pub use flow::*;
pub use routing::*;
pub use settle::*;

const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

/// A queue bound to `patterns` (relative to a fresh prefix) and that prefix.
async fn setup(broker: &dyn Broker, patterns: &[&str], max_attempts: u32) -> (String, String) {
    let prefix = unique("t").replace('-', "");
    let queue = unique("q");
    let full: Vec<String> = patterns.iter().map(|p| format!("{prefix}.{p}")).collect();
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    broker
        .declare(&[QueueSpec::new(queue.clone(), &refs, max_attempts)])
        .await
        .expect("declare");
    (queue, prefix)
}

fn message(key: &str, n: usize) -> Envelope {
    Envelope::new(key, Uuid::now_v7(), "tenant-a")
        .with_spec(format!("resize:{n}x{n}"))
        .with_header("n", n.to_string())
        .with_part(Part::new(
            "original",
            "image/png",
            Bytes::from(vec![(n % 251) as u8; 64 + n]),
        ))
}

async fn next(stream: &mut DeliveryStream) -> crate::Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no delivery within the wait")
        .expect("stream ended")
        .expect("delivery error")
}

async fn assert_quiet(stream: &mut DeliveryStream) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, stream.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

async fn sub(broker: &dyn Broker, queue: &str, prefetch: usize) -> DeliveryStream {
    broker
        .subscribe(Subscription::new(queue, prefetch))
        .await
        .expect("subscribe")
}

/// Say, past the test harness's capture (so it shows in CI logs), that a
/// case did not run on this backend and why.
fn skipped(case: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {case}: {why}");
}

/// For resilience tests: consume `stream` in a task that acks every
/// delivery and sends the id of each one acked. A failed ack (connection
/// cut) is not sent: that message is redelivered.
pub fn ack_and_forward(
    mut stream: DeliveryStream,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Uuid>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let Ok(d) = item else { continue };
            let id = d.envelope().id;
            if d.ack().await.is_ok() && tx.send(id).is_err() {
                break;
            }
        }
    });
    (task, rx)
}

/// For resilience tests: take ids from `rx` (see [`ack_and_forward`]) into
/// `seen` until `done(seen)`; fails, saying `what`, when nothing arrives
/// for `stall`.
pub async fn receive_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Uuid>,
    seen: &mut HashSet<Uuid>,
    stall: Duration,
    what: &str,
    done: impl Fn(&HashSet<Uuid>) -> bool,
) {
    while !done(seen) {
        let id = tokio::time::timeout(stall, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing for {stall:?} after {} ids", seen.len()))
            .expect("the consumer ended");
        seen.insert(id);
    }
}
