//! Routing, declaration, order and payloads.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::*;
use crate::broker::{Broker, QueueSpec};
use crate::envelope::{Envelope, Part};

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

/// A queue declared without parts gets each message's metadata and headers,
/// no parts, and their size; a queue bound to the same key gets them whole.
pub async fn queue_without_parts_gets_metadata_and_size(broker: Arc<dyn Broker>) {
    let prefix = unique("t").replace('-', "");
    let (whole, bare) = (unique("whole"), unique("bare"));
    let key = format!("{prefix}.image.archived");
    broker
        .declare(&[
            QueueSpec::new(whole.clone(), &[&key], 3),
            QueueSpec::new(bare.clone(), &[&format!("{prefix}.#")], 3).without_parts(),
        ])
        .await
        .expect("declare");
    let sent = message(&key, 300)
        .with_part(Part::new(
            "result",
            "image/jpeg",
            Bytes::from(vec![9u8; 1000]),
        ))
        .with_header("filename", "a.png");
    let size = sent.payload_len() as u64;
    broker.publish(sent.clone()).await.expect("publish");
    let mut s = sub(broker.as_ref(), &whole, 4).await;
    let d = next(&mut s).await;
    assert_eq!(
        d.envelope(),
        &sent,
        "the queue with parts gets the message whole"
    );
    d.ack().await.expect("ack");
    let mut s = sub(broker.as_ref(), &bare, 4).await;
    let d = next(&mut s).await;
    let got = d.envelope().clone();
    assert!(
        got.parts.is_empty(),
        "parts delivered: {:?}",
        got.parts.len()
    );
    assert_eq!(got.payload_size(), size);
    assert_eq!(
        (
            got.id,
            got.job_id,
            &got.tenant,
            &got.spec,
            &got.event,
            got.created_at_ms
        ),
        (
            sent.id,
            sent.job_id,
            &sent.tenant,
            &sent.spec,
            &sent.event,
            sent.created_at_ms
        )
    );
    for (k, v) in &sent.headers {
        assert_eq!(got.headers.get(k), Some(v), "header {k}");
    }
    // Retried, it comes back the same.
    d.nack(std::time::Duration::ZERO, "again")
        .await
        .expect("nack");
    let d = next(&mut s).await;
    assert_eq!(d.attempt(), 2);
    assert!(d.envelope().parts.is_empty());
    assert_eq!(d.envelope().payload_size(), size);
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
