//! Cases every [`Broker`] passes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use super::unique;
use crate::broker::{Broker, DeliveryStream, QueueSpec, Subscription, dead_letter_queue};
use crate::envelope::{Envelope, Part, headers};
use crate::error::Error;

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

/// Payload, metadata and headers arrive intact.
pub async fn publish_receive_intact(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["image.submitted"], 3).await;
    let sent = message(&format!("{p}.image.submitted"), 7).with_header("filename", "ü.png");
    broker.publish(sent.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 4).await;
    let d = next(&mut s).await;
    let got = d.envelope().clone();
    assert_eq!(got.id, sent.id);
    assert_eq!(got.job_id, sent.job_id);
    assert_eq!(got.tenant, sent.tenant);
    assert_eq!(got.spec, sent.spec);
    assert_eq!(got.event, sent.event);
    assert_eq!(got.created_at_ms, sent.created_at_ms);
    assert_eq!(got.parts, sent.parts);
    for (k, v) in &sent.headers {
        assert_eq!(got.headers.get(k), Some(v), "header {k}");
    }
    assert_eq!(d.attempt(), 1);
    d.ack().await.expect("ack");
    assert_quiet(&mut s).await;
}

/// `*` and `#` route as in AMQP; a queue never sees another queue's messages.
pub async fn routing_patterns_and_isolation(broker: Arc<dyn Broker>) {
    let prefix = unique("t").replace('-', "");
    let star = unique("star");
    let hash = unique("hash");
    let exact = unique("exact");
    broker
        .declare(&[
            QueueSpec::new(star.clone(), &[&format!("{prefix}.image.*")], 3),
            QueueSpec::new(hash.clone(), &[&format!("{prefix}.#")], 3),
            QueueSpec::new(exact.clone(), &[&format!("{prefix}.image.failed")], 3),
        ])
        .await
        .expect("declare");
    for key in ["image.submitted", "image.failed", "image.x.y", "other"] {
        broker
            .publish(message(&format!("{prefix}.{key}"), 1))
            .await
            .expect("publish");
    }
    let expect = [
        (&star, vec!["image.submitted", "image.failed"]),
        (
            &hash,
            vec!["image.submitted", "image.failed", "image.x.y", "other"],
        ),
        (&exact, vec!["image.failed"]),
    ];
    for (queue, keys) in expect {
        let mut s = sub(broker.as_ref(), queue, 10).await;
        let mut got = Vec::new();
        for _ in 0..keys.len() {
            let d = next(&mut s).await;
            got.push(
                d.envelope()
                    .event
                    .trim_start_matches(&format!("{prefix}."))
                    .to_string(),
            );
            d.ack().await.expect("ack");
        }
        got.sort();
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "queue {queue}");
        assert_quiet(&mut s).await;
    }
}

/// Publishing to a key no queue is bound to fails.
pub async fn unroutable_publish_is_an_error(broker: Arc<dyn Broker>) {
    let (_queue, p) = setup(broker.as_ref(), &["bound"], 3).await;
    let err = broker
        .publish(message(&format!("{p}.unbound"), 1))
        .await
        .expect_err("an unroutable message must be refused");
    assert!(!err.is_retryable(), "{err}");
}

/// Two consumers of one queue share its messages; each message once.
///
/// Sharing is made certain, not left to scheduling: until the first 10
/// messages are out, each consumer holds what it gets unacked, and with a
/// prefetch of 5 one consumer cannot take them all.
pub async fn competing_consumers_share_without_duplicates(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["work"], 3).await;
    let total = 200;
    let mut consumers = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    for c in 0..2 {
        let mut s = sub(broker.as_ref(), &queue, 5).await;
        let tx = tx.clone();
        let mut release = release_rx.clone();
        consumers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let released = *release.borrow();
                if released {
                    for d in held.drain(..) {
                        crate::Delivery::ack(d).await.expect("ack");
                    }
                }
                tokio::select! {
                    item = s.next() => {
                        let Some(Ok(d)) = item else { return };
                        if tx.send((c, d.envelope().id)).is_err() {
                            return;
                        }
                        if *release.borrow() {
                            d.ack().await.expect("ack");
                        } else {
                            held.push(d);
                        }
                    }
                    changed = release.changed(), if !released => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let mut sent = HashSet::new();
    for n in 0..total {
        let m = message(&format!("{p}.work"), n);
        sent.insert(m.id);
        broker.publish(m).await.expect("publish");
    }
    let mut seen = HashSet::new();
    let mut per_consumer = [0usize; 2];
    while seen.len() < total {
        let (c, id) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("stalled")
            .expect("closed");
        assert!(seen.insert(id), "duplicate delivery of {id}");
        per_consumer[c] += 1;
        if seen.len() == 10 {
            assert!(
                per_consumer.iter().all(|n| *n > 0),
                "one consumer holds 10 unacked deliveries with a prefetch of 5: {per_consumer:?}"
            );
            release_tx.send(true).expect("release");
        }
    }
    assert_eq!(seen, sent);
    assert!(
        per_consumer.iter().all(|n| *n > 0),
        "work not shared: {per_consumer:?}"
    );
    if let Ok(Some((_, id))) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("extra delivery of {id}");
    }
    for c in consumers {
        c.abort();
    }
}

/// A nacked delivery comes back with `attempt` + 1.
pub async fn nack_redelivers_with_higher_attempt(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["retry"], 5).await;
    let m = message(&format!("{p}.retry"), 3);
    broker.publish(m.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    for attempt in 1..=3 {
        let d = next(&mut s).await;
        assert_eq!(d.envelope().id, m.id);
        assert_eq!(d.attempt(), attempt);
        assert_eq!(d.envelope().parts, m.parts);
        if attempt < 3 {
            d.nack(Duration::ZERO, "try again").await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
    assert_quiet(&mut s).await;
}

/// Say, past the test harness's capture (so it shows in CI logs), that a
/// case did not run on this backend and why.
fn skipped(case: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {case}: {why}");
}

/// A nack with a delay is not redelivered before the delay.
pub async fn nack_delay_is_honoured(broker: Arc<dyn Broker>) {
    if !broker.capabilities().delayed_retry {
        skipped(
            "nack_delay_is_honoured",
            "the backend does not declare delayed_retry",
        );
        return;
    }
    let (queue, p) = setup(broker.as_ref(), &["later"], 5).await;
    broker
        .publish(message(&format!("{p}.later"), 1))
        .await
        .expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    let d = next(&mut s).await;
    let delay = Duration::from_millis(700);
    let nacked = Instant::now();
    d.nack(delay, "later").await.expect("nack");
    let d = next(&mut s).await;
    assert!(
        nacked.elapsed() >= delay,
        "redelivered after {:?}",
        nacked.elapsed()
    );
    assert_eq!(d.attempt(), 2);
    d.ack().await.expect("ack");
}

/// Dropping a delivery unsettled redelivers it.
pub async fn dropped_delivery_is_redelivered(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["drop"], 5).await;
    let m = message(&format!("{p}.drop"), 2);
    broker.publish(m.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    let d = next(&mut s).await;
    assert_eq!(d.envelope().id, m.id);
    drop(d);
    let d = next(&mut s).await;
    assert_eq!(d.envelope().id, m.id);
    assert!(d.attempt() >= 2, "attempt {}", d.attempt());
    d.ack().await.expect("ack");
    assert_quiet(&mut s).await;
}

/// After `max_attempts` nacks the message is in the dead-letter queue with
/// the reason, and the queue behind it keeps flowing.
pub async fn dead_letter_after_max_attempts_keeps_reason(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["poison"], 3).await;
    let poison = message(&format!("{p}.poison"), 1);
    let fine = message(&format!("{p}.poison"), 2);
    broker.publish(poison.clone()).await.expect("publish");
    broker.publish(fine.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 2).await;
    let mut fine_seen = false;
    let mut poison_attempts = 0;
    while !(fine_seen && poison_attempts == 3) {
        let d = next(&mut s).await;
        if d.envelope().id == fine.id {
            fine_seen = true;
            d.ack().await.expect("ack");
        } else {
            poison_attempts += 1;
            assert_eq!(d.attempt(), poison_attempts);
            d.nack(Duration::ZERO, "still broken").await.expect("nack");
        }
    }
    assert_quiet(&mut s).await;
    let mut dead = sub(broker.as_ref(), &dead_letter_queue(&queue), 1).await;
    let d = next(&mut dead).await;
    assert_eq!(d.envelope().id, poison.id);
    assert_eq!(d.envelope().parts, poison.parts);
    assert_dead_headers(
        d.envelope(),
        &queue,
        "exhausted",
        3,
        "gave up after 3 attempts: still broken",
    );
    d.ack().await.expect("ack");
}

/// The dead-letter headers of [`crate::broker::policy`], the same on every
/// backend: reason, cause, queue without the namespace, attempts, time.
fn assert_dead_headers(env: &Envelope, queue: &str, cause: &str, attempts: u32, reason: &str) {
    let h = |name: &str| env.header(name).unwrap_or_default().to_string();
    assert_eq!(h(headers::DEAD_LETTER_REASON), reason, "{:?}", env.headers);
    assert_eq!(h(headers::DEAD_LETTER_CAUSE), cause, "{:?}", env.headers);
    assert_eq!(h(headers::DEAD_LETTER_QUEUE), queue, "{:?}", env.headers);
    assert_eq!(
        h(headers::DEAD_LETTER_ATTEMPTS),
        attempts.to_string(),
        "{:?}",
        env.headers
    );
    let at: i64 = h(headers::DEAD_LETTER_AT_MS)
        .parse()
        .expect("dead-letter-at-ms");
    let now = crate::envelope::now_ms();
    assert!(
        at <= now && now - at < 600_000,
        "dead-letter-at-ms {at}, now {now}"
    );
    let known = [
        headers::DEAD_LETTER_REASON,
        headers::DEAD_LETTER_CAUSE,
        headers::DEAD_LETTER_QUEUE,
        headers::DEAD_LETTER_ATTEMPTS,
        headers::DEAD_LETTER_AT_MS,
    ];
    let extra: Vec<&String> = env
        .headers
        .keys()
        .filter(|k| k.starts_with(headers::DEAD_LETTER_PREFIX) && !known.contains(&k.as_str()))
        .collect();
    assert!(extra.is_empty(), "unexpected dead-letter headers {extra:?}");
}

/// A delivery dropped unsettled on its last attempt goes to the dead-letter
/// queue (cause `abandoned`), so a message that kills its consumers cannot
/// loop for ever.
pub async fn dropped_at_max_attempts_is_dead_lettered(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["crash"], 2).await;
    let m = message(&format!("{p}.crash"), 3);
    broker.publish(m.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    for attempt in 1..=2 {
        let d = next(&mut s).await;
        assert_eq!(d.envelope().id, m.id);
        assert_eq!(d.attempt(), attempt);
        drop(d);
    }
    assert_quiet(&mut s).await;
    let mut dead = sub(broker.as_ref(), &dead_letter_queue(&queue), 1).await;
    let d = next(&mut dead).await;
    assert_eq!(d.envelope().id, m.id);
    assert_eq!(d.envelope().parts, m.parts);
    assert_dead_headers(
        d.envelope(),
        &queue,
        "abandoned",
        2,
        "delivered 2 times without being settled (its consumers died or dropped it)",
    );
    d.ack().await.expect("ack");
}

/// `dead_letter` moves the message at once, reason kept.
pub async fn explicit_dead_letter_keeps_reason(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["bad"], 5).await;
    let m = message(&format!("{p}.bad"), 1);
    broker.publish(m.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    next(&mut s)
        .await
        .dead_letter("cannot parse")
        .await
        .expect("dead-letter");
    assert_quiet(&mut s).await;
    let mut dead = sub(broker.as_ref(), &dead_letter_queue(&queue), 1).await;
    let d = next(&mut dead).await;
    assert_eq!(d.envelope().id, m.id);
    assert_dead_headers(d.envelope(), &queue, "rejected", 1, "cannot parse");
    d.ack().await.expect("ack");
}

/// No more than `prefetch` deliveries are unsettled at once.
pub async fn prefetch_bounds_unsettled_deliveries(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["pf"], 3).await;
    for n in 0..10 {
        broker
            .publish(message(&format!("{p}.pf"), n))
            .await
            .expect("publish");
    }
    let mut s = sub(broker.as_ref(), &queue, 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut s).await);
    }
    assert_quiet(&mut s).await;
    held.pop().expect("held").ack().await.expect("ack");
    held.push(next(&mut s).await);
    assert_quiet(&mut s).await;
    for d in held {
        d.ack().await.expect("ack");
    }
    for _ in 0..6 {
        next(&mut s).await.ack().await.expect("ack");
    }
}

/// `close` ends subscriptions after in-flight work and refuses new publishes.
pub async fn close_drains_and_refuses_publishes(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["close"], 3).await;
    let total = 20;
    for n in 0..total {
        broker
            .publish(message(&format!("{p}.close"), n))
            .await
            .expect("publish");
    }
    let mut s = sub(broker.as_ref(), &queue, 4).await;
    let consumer = tokio::spawn(async move {
        let mut acked = 0;
        while let Some(item) = s.next().await {
            item.expect("delivery").ack().await.expect("ack");
            acked += 1;
            if acked == total {
                break;
            }
        }
        (acked, s)
    });
    let (acked, mut s) = tokio::time::timeout(WAIT, consumer)
        .await
        .expect("stalled")
        .expect("task");
    assert_eq!(acked, total);
    tokio::time::timeout(WAIT, broker.close())
        .await
        .expect("close hung")
        .expect("close");
    let end = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("stream did not end");
    assert!(end.is_none(), "stream yielded after close");
    let err = broker
        .publish(message(&format!("{p}.close"), 1))
        .await
        .expect_err("publish after close");
    assert!(matches!(err, Error::Closed(_)), "{err}");
}

/// Many tasks publishing at once lose nothing.
pub async fn concurrent_publishers(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["many"], 3).await;
    let tasks = 8;
    let each = 50;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let b = Arc::clone(&broker);
        let key = format!("{p}.many");
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..each {
                let m = message(&key, t * 1000 + n);
                ids.push(m.id);
                b.publish(m).await.expect("publish");
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for h in handles {
        sent.extend(h.await.expect("task"));
    }
    let mut s = sub(broker.as_ref(), &queue, 50).await;
    let mut seen = HashSet::new();
    while seen.len() < sent.len() {
        let d = next(&mut s).await;
        assert!(seen.insert(d.envelope().id), "duplicate");
        d.ack().await.expect("ack");
    }
    assert_eq!(seen, sent);
}

/// A 20 MB part arrives byte for byte.
pub async fn large_payload_20mb(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["big"], 3).await;
    let data: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|i: usize| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let m = Envelope::new(format!("{p}.big"), Uuid::now_v7(), "t").with_part(Part::new(
        "original",
        "image/jpeg",
        Bytes::from(data),
    ));
    broker.publish(m.clone()).await.expect("publish 20 MB");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    let d = next(&mut s).await;
    assert_eq!(d.envelope().parts, m.parts);
    d.ack().await.expect("ack");
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

/// Dead letters are published again by `replay_dead`, with a fresh attempt
/// count and without their dead-letter headers, and leave the dead queue.
pub async fn dead_letters_can_be_replayed(broker: Arc<dyn Broker>) {
    use crate::services::replay_dead;
    let (queue, prefix) = setup(broker.as_ref(), &["job"], 1).await;
    let mut jobs = Vec::new();
    for n in 0..3 {
        let env = message(&format!("{prefix}.job"), n);
        broker.publish(env.clone()).await.unwrap();
        jobs.push(env);
    }
    let mut s = sub(broker.as_ref(), &queue, 8).await;
    for _ in 0..3 {
        next(&mut s).await.dead_letter("boom").await.unwrap();
    }
    drop(s);

    let report = replay_dead(broker.as_ref(), &queue, u64::MAX, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((report.replayed, report.kept), (3, 0), "{report:?}");
    let mut s = sub(broker.as_ref(), &queue, 8).await;
    for _ in 0..3 {
        let d = next(&mut s).await;
        assert_eq!(d.attempt(), 1);
        let left: Vec<&String> = d
            .envelope()
            .headers
            .keys()
            .filter(|k| k.starts_with(headers::DEAD_LETTER_PREFIX))
            .collect();
        assert!(left.is_empty(), "dead-letter headers kept: {left:?}");
        let sent = jobs
            .iter()
            .find(|j| j.id == d.envelope().id)
            .expect("a replayed job");
        assert_eq!(d.envelope().parts, sent.parts, "payload intact");
        d.ack().await.unwrap();
    }
    let mut dead = sub(broker.as_ref(), &dead_letter_queue(&queue), 8).await;
    assert_quiet(&mut dead).await;
}

/// `declare` again (same spec) changes nothing: one message, one delivery.
pub async fn declare_is_idempotent(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["again"], 3).await;
    let spec = QueueSpec::new(queue.clone(), &[&format!("{p}.again")], 3);
    broker
        .declare(std::slice::from_ref(&spec))
        .await
        .expect("declare again");
    broker.declare(&[spec]).await.expect("declare a third time");
    let m = message(&format!("{p}.again"), 1);
    broker.publish(m.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 4).await;
    let d = next(&mut s).await;
    assert_eq!(d.envelope().id, m.id);
    d.ack().await.expect("ack");
    assert_quiet(&mut s).await;
}

/// A subscription that ends (its stream dropped, nothing unsettled) can be
/// taken up again: what it had not handed out arrives, nothing twice.
pub async fn a_subscription_ends_and_resumes(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["resume"], 5).await;
    let sent: Vec<Envelope> = (0..10)
        .map(|n| message(&format!("{p}.resume"), n))
        .collect();
    for m in &sent {
        broker.publish(m.clone()).await.expect("publish");
    }
    let mut seen = HashSet::new();
    {
        let mut s = sub(broker.as_ref(), &queue, 4).await;
        for _ in 0..3 {
            let d = next(&mut s).await;
            assert!(seen.insert(d.envelope().id), "delivered twice");
            d.ack().await.expect("ack");
        }
    }
    let late = message(&format!("{p}.resume"), 10);
    broker.publish(late.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &queue, 4).await;
    while seen.len() < 11 {
        let d = next(&mut s).await;
        assert!(seen.insert(d.envelope().id), "delivered twice");
        d.ack().await.expect("ack");
    }
    let mut want: HashSet<Uuid> = sent.iter().map(|m| m.id).collect();
    want.insert(late.id);
    assert_eq!(seen, want);
    assert_quiet(&mut s).await;
}

/// Several queues consumed at once each get their own messages, all of them.
pub async fn several_queues_consumed_at_once(broker: Arc<dyn Broker>) {
    let prefix = unique("t").replace('-', "");
    let queues: Vec<String> = (0..3).map(|_| unique("multi")).collect();
    let specs: Vec<QueueSpec> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| QueueSpec::new(q.clone(), &[&format!("{prefix}.k{i}")], 3))
        .collect();
    broker.declare(&specs).await.expect("declare");
    let per_queue = 20;
    for n in 0..per_queue {
        for i in 0..queues.len() {
            broker
                .publish(message(&format!("{prefix}.k{i}"), n))
                .await
                .expect("publish");
        }
    }
    let mut tasks = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let mut s = sub(broker.as_ref(), q, 5).await;
        let key = format!("{prefix}.k{i}");
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < per_queue {
                let d = next(&mut s).await;
                assert_eq!(d.envelope().event, key);
                got.push(d.envelope().id);
                d.ack().await.expect("ack");
            }
            assert_quiet(&mut s).await;
            got
        }));
    }
    for t in tasks {
        let got = t.await.expect("consumer");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), per_queue);
    }
}

/// A backend that declares `ordered` delivers one queue's messages in
/// publish order (before retries).
pub async fn ordered_when_declared(broker: Arc<dyn Broker>) {
    if !broker.capabilities().ordered {
        skipped(
            "ordered_when_declared",
            "the backend does not declare ordered",
        );
        return;
    }
    let (queue, p) = setup(broker.as_ref(), &["seq"], 3).await;
    for n in 0..50 {
        broker
            .publish(message(&format!("{p}.seq"), n))
            .await
            .expect("publish");
    }
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    for n in 0..50 {
        let d = next(&mut s).await;
        assert_eq!(d.envelope().header("n"), Some(n.to_string().as_str()));
        d.ack().await.expect("ack");
    }
}

/// Deliveries handed out before `close` can still be settled during and
/// after it.
pub async fn deliveries_settle_after_close(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["late"], 3).await;
    for n in 0..2 {
        broker
            .publish(message(&format!("{p}.late"), n))
            .await
            .expect("publish");
    }
    let mut s = sub(broker.as_ref(), &queue, 4).await;
    let held = vec![next(&mut s).await, next(&mut s).await];
    // A non-persistent backend's close waits for them: settle while it runs.
    let closing = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move { broker.close().await })
    };
    for d in held {
        d.ack().await.expect("ack after close");
    }
    tokio::time::timeout(WAIT, closing)
        .await
        .expect("close hung")
        .expect("task")
        .expect("close");
}

/// `ready` is `Ok` while the backend is usable, and an error once closed.
pub async fn ready_until_closed(broker: Arc<dyn Broker>) {
    broker.ready().await.expect("ready");
    broker.close().await.expect("close");
    let err = broker.ready().await.expect_err("ready after close");
    assert!(matches!(err, Error::Closed(_)), "{err}");
}

/// Thousands of messages from concurrent publishers to three competing
/// consumers: every message delivered once, none lost.
pub async fn stress_nothing_lost_or_doubled(broker: Arc<dyn Broker>) {
    let (queue, p) = setup(broker.as_ref(), &["load"], 3).await;
    let (publishers, each) = (4, 500);
    let total = publishers * each;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let mut s = sub(broker.as_ref(), &queue, 20).await;
        let tx = tx.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(Ok(d)) = s.next().await {
                if tx.send(d.envelope().id).is_err() {
                    break;
                }
                if d.ack().await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut sent = Vec::new();
    for w in 0..publishers {
        let broker = Arc::clone(&broker);
        let key = format!("{p}.load");
        sent.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..each {
                let m = Envelope::new(key.as_str(), Uuid::now_v7(), "t")
                    .with_header("n", format!("{w}-{n}"));
                ids.push(m.id);
                broker.publish(m).await.expect("publish");
            }
            ids
        }));
    }
    let mut want = HashSet::new();
    for t in sent {
        want.extend(t.await.expect("publisher"));
    }
    let mut seen = HashSet::new();
    while seen.len() < total {
        let id = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {total}", seen.len()))
            .expect("consumers ended");
        assert!(seen.insert(id), "delivered twice: {id}");
    }
    assert_eq!(seen, want);
    for c in consumers {
        c.abort();
    }
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
