//! Settling: nacks, delays, drops, dead letters and their replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::broker::{Broker, dead_letter_queue};
use crate::envelope::{Envelope, headers};

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

/// The operator's view: depth and consumers, dead letters peeked (left in
/// place, reason readable), one job's dead letter replayed, the rest purged.
pub async fn dead_letters_can_be_inspected_replayed_and_purged(broker: Arc<dyn Broker>) {
    use crate::services::replay_dead_job;
    let (queue, prefix) = setup(broker.as_ref(), &["job"], 5).await;
    let sent: Vec<Envelope> = (0..4)
        .map(|n| message(&format!("{prefix}.job"), n))
        .collect();
    for env in &sent {
        broker.publish(env.clone()).await.unwrap();
    }
    let stats = eventually_stats(broker.as_ref(), &queue, |s| s.messages == 4).await;
    assert_eq!(stats.dead_letters, 0);
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    for (n, want) in sent.iter().take(3).enumerate() {
        let d = next(&mut s).await;
        assert_eq!(d.envelope().id, want.id, "in publish order");
        d.dead_letter(format!("reason {n}")).await.unwrap();
    }
    let d = next(&mut s).await;
    let stats = broker.queue_stats(&queue).await.unwrap();
    if let Some(c) = stats.consumers {
        assert!(c >= 1, "a subscription is open: {stats:?}");
    }
    d.ack().await.unwrap();
    drop(s);
    let stats = eventually_stats(broker.as_ref(), &queue, |s| {
        s.messages == 0 && s.dead_letters == 3
    })
    .await;
    assert_eq!((stats.messages, stats.dead_letters), (0, 3));

    // A peek shows them with their reason and leaves them there.
    for _ in 0..2 {
        let peeked = broker.peek_dead(&queue, 10).await.unwrap();
        let mut ids: Vec<Uuid> = peeked.iter().map(|e| e.id).collect();
        ids.sort();
        let mut want: Vec<Uuid> = sent[..3].iter().map(|e| e.id).collect();
        want.sort();
        assert_eq!(ids, want);
        for e in &peeked {
            let n = sent.iter().position(|s| s.id == e.id).unwrap();
            let reason = e.headers.get(headers::DEAD_LETTER_REASON);
            assert_eq!(reason, Some(&format!("reason {n}")));
            assert_eq!(e.parts, sent[n].parts, "payload intact");
        }
    }
    assert_eq!(broker.peek_dead(&queue, 1).await.unwrap().len(), 1);
    assert!(broker.peek_dead(&queue, 0).await.unwrap().is_empty());

    // Replaying one job's dead letter brings back that job only.
    let idle = Duration::from_secs(2);
    let r = replay_dead_job(broker.as_ref(), &queue, sent[1].job_id, idle)
        .await
        .unwrap();
    assert_eq!((r.replayed, r.kept), (1, 0), "{r:?}");
    let mut s = sub(broker.as_ref(), &queue, 1).await;
    let d = next(&mut s).await;
    assert_eq!(d.envelope().id, sent[1].id);
    assert_eq!(d.attempt(), 1);
    d.ack().await.unwrap();
    assert_quiet(&mut s).await;
    drop(s);
    eventually_stats(broker.as_ref(), &queue, |s| s.dead_letters == 2).await;

    // Purging empties the dead-letter queue.
    assert_eq!(broker.purge_dead(&queue).await.unwrap(), 2);
    let stats = eventually_stats(broker.as_ref(), &queue, |s| s.dead_letters == 0).await;
    assert_eq!(stats.dead_letters, 0);
    assert!(broker.peek_dead(&queue, 10).await.unwrap().is_empty());
    assert_eq!(broker.purge_dead(&queue).await.unwrap(), 0);

    let missing = unique("missing");
    assert!(
        matches!(
            broker.queue_stats(&missing).await,
            Err(crate::Error::NotFound(_))
        ),
        "an undeclared queue is not found"
    );
}

/// The stats of `queue` once `done` holds; fails after the wait (counts
/// some brokers keep are updated a moment after the operation).
async fn eventually_stats(
    broker: &dyn Broker,
    queue: &str,
    done: impl Fn(&crate::broker::QueueStats) -> bool,
) -> crate::broker::QueueStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = broker.queue_stats(queue).await.expect("queue stats");
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats stayed at {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A window of deliveries settled at once and out of order (acks,
/// nacks and drops mixed, as concurrent jobs finish): every message ends
/// acked exactly once, each nacked or dropped one comes back once with
/// attempt 2, and nothing else arrives. A backend that batches acks must
/// not let one ack settle a delivery still running or handed back.
pub async fn out_of_order_settling_settles_each_once(broker: Arc<dyn Broker>) {
    use futures::FutureExt;
    let (queue, p) = setup(broker.as_ref(), &["mix"], 5).await;
    let total = 96;
    let mut sent = HashSet::new();
    for n in 0..total {
        let m = message(&format!("{p}.mix"), n);
        sent.insert(m.id);
        broker.publish(m).await.expect("publish");
    }
    let mut s = sub(broker.as_ref(), &queue, 32).await;
    let (mut acked, mut second) = (HashSet::new(), HashSet::new());
    let mut handed_back = 0;
    let mut settling = futures::stream::FuturesUnordered::new();
    while acked.len() < total {
        // A window of what is there, settled in a shuffled order.
        let mut window = vec![next(&mut s).await];
        while window.len() < 24 {
            match tokio::time::timeout(Duration::from_millis(50), s.next()).await {
                Ok(Some(d)) => window.push(d.expect("delivery error")),
                _ => break,
            }
        }
        fastrand::shuffle(&mut window);
        for d in window {
            let id = d.envelope().id;
            let n: usize = d
                .envelope()
                .header("n")
                .and_then(|n| n.parse().ok())
                .expect("n");
            if d.attempt() > 1 {
                assert!(second.insert(id), "{id} came back twice");
            }
            match (d.attempt(), n % 5) {
                (1, 1) => {
                    handed_back += 1;
                    settling.push(
                        async move {
                            d.nack(Duration::ZERO, "again").await.expect("nack");
                            None
                        }
                        .boxed(),
                    );
                }
                (1, 2) => {
                    handed_back += 1;
                    drop(d);
                }
                _ => settling.push(
                    async move {
                        d.ack().await.expect("ack");
                        Some(id)
                    }
                    .boxed(),
                ),
            }
        }
        while let Some(done) = settling.next().await {
            if let Some(id) = done {
                assert!(acked.insert(id), "{id} acked twice");
            }
        }
    }
    assert_eq!(acked, sent);
    assert_eq!(
        second.len(),
        handed_back,
        "each handed-back message once more"
    );
    assert_quiet(&mut s).await;
}
