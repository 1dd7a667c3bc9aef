//! Flow: competing consumers, prefetch, close, resume, load.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use super::*;
use crate::broker::Broker;
use crate::envelope::Envelope;
use crate::error::Error;

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
