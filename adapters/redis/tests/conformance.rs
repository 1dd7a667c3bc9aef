//! The broker conformance suite on the real Redis (`PIPELINE_TEST_REDIS_URL`,
//! default the local server). Each test uses its own namespace and deletes
//! its keys at the end, passed or failed (they also expire five minutes
//! after they were declared, should a test be killed). An unreachable server
//! fails the tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_redis::RedisBroker;

async fn redis() -> Arc<RedisBroker> {
    let url = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = pipeline_core::testkit::unique("conf");
    // The test's keys expire by themselves.
    match RedisBroker::connect_with_key_ttl(&url, &ns, Some(std::time::Duration::from_secs(300)))
        .await
    {
        Ok(b) => Arc::new(b),
        Err(e) => panic!(
            "Redis is unreachable ({e}); start it (see .ci/run) or set PIPELINE_TEST_REDIS_URL"
        ),
    }
}

async fn delete_keys(broker: Arc<RedisBroker>) {
    broker.delete_all().await.expect("delete the test's keys");
}

pipeline_core::broker_conformance!(redis(), cleanup = delete_keys);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_consumer_are_claimed_by_a_live_one() {
    use futures::StreamExt;
    use pipeline_core::broker::{QueueSpec, Subscription};
    use pipeline_core::{Broker, Envelope};
    let url = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = pipeline_core::testkit::unique("claim");
    let ttl = Some(std::time::Duration::from_secs(300));
    let idle = std::time::Duration::from_millis(800);
    let a = RedisBroker::connect_with(&url, &ns, ttl, idle)
        .await
        .expect("connect");
    a.declare(&[QueueSpec::new("work", &["job"], 5)])
        .await
        .expect("declare");
    let sent = Envelope::new("job", uuid::Uuid::now_v7(), "t");
    a.publish(sent.clone()).await.expect("publish");
    // Consumer A takes it and dies without settling (no Drop runs).
    let mut sa = a
        .subscribe(Subscription::new("work", 1))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), sa.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, sent.id);
    std::mem::forget(d);
    std::mem::forget(sa);
    // Consumer B, in another "process", gets it after the idle time.
    let b = RedisBroker::connect_with(&url, &ns, ttl, idle)
        .await
        .expect("connect");
    b.declare(&[QueueSpec::new("work", &["job"], 5)])
        .await
        .expect("declare");
    let mut sb = b
        .subscribe(Subscription::new("work", 1))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(std::time::Duration::from_secs(15), sb.next())
        .await
        .expect("never claimed")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, sent.id);
    assert_eq!(d.attempt(), 2, "the lost delivery counts as an attempt");
    d.ack().await.expect("ack");
    assert!(b.delete_all().await.expect("delete the test's keys") >= 2);
}

/// A live consumer whose heartbeat lapsed (its host was cut off a moment)
/// and that reads an entry before beating again: another consumer, seeing
/// no heartbeat, must not drop it from the group with that entry (which
/// would leave the entry in the stream, delivered to nobody, for ever). It
/// takes the entry once the entry is old enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_heartbeat_lapsed_loses_no_entry() {
    use fred::prelude::{ClientLike, KeysInterface};
    use futures::StreamExt;
    use pipeline_core::broker::{QueueSpec, Subscription};
    use pipeline_core::{Broker, Envelope};
    use std::time::Duration;
    let base = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = pipeline_core::testkit::unique("lapse");
    // A beats every 20 s; B looks for dead consumers at every read (each
    // 500 ms at most).
    let slow = format!("{base}?liveness_ms=60000&claim_idle_ms=30000&key_ttl_s=300");
    let fast = format!("{base}?liveness_ms=300&claim_idle_ms=30000&key_ttl_s=300");
    let a = RedisBroker::connect(&slow, &ns).await.expect("connect");
    a.declare(&[QueueSpec::new("work", &["job"], 5)])
        .await
        .expect("declare");
    let b = RedisBroker::connect(&fast, &ns).await.expect("connect");
    let client =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&base).expect("url"))
            .build()
            .expect("client");
    client.init().await.expect("connect");
    // Both consume, each on a task of its own; A waits for entries first,
    // so Redis hands it the entry.
    let forward = |mut stream: pipeline_core::broker::DeliveryStream| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = stream.next().await {
                if tx.send(d).is_err() {
                    break;
                }
            }
        });
        (task, rx)
    };
    let (task_a, mut rx_a) = forward(
        a.subscribe(Subscription::new("work", 1))
            .await
            .expect("subscribe"),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (task_b, mut rx_b) = forward(
        b.subscribe(Subscription::new("work", 1))
            .await
            .expect("subscribe"),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Envelope::new("job", uuid::Uuid::now_v7(), "t");
    a.publish(sent.clone()).await.expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), rx_a.recv())
        .await
        .expect("A got nothing")
        .expect("A's stream ended");
    assert_eq!(d.envelope().id, sent.id);
    // A's heartbeat lapses (as across a partition) while it holds the
    // entry; then A dies without settling it.
    let keys: Vec<String> = client
        .custom(fred::cmd!("KEYS"), vec![format!("{{{ns}.work}}:alive:*")])
        .await
        .expect("KEYS");
    let mine: Vec<String> = keys.into_iter().filter(|k| k.contains("c-")).collect();
    assert_eq!(mine.len(), 2, "both heartbeats: {mine:?}");
    // A's consumer read the entry: the one in the group's pending list.
    let summary: fred::types::Value = client
        .custom(
            fred::cmd!("XPENDING"),
            vec![format!("{{{ns}.work}}"), "pipeline".into()],
        )
        .await
        .expect("XPENDING");
    let holder = format!("{summary:?}");
    let a_key = mine
        .iter()
        .find(|k| holder.contains(k.rsplit(':').next().unwrap_or_default()))
        .expect("A's heartbeat")
        .clone();
    let _: i64 = client.del(a_key).await.expect("DEL");
    std::mem::forget(d);
    task_a.abort();
    let got = tokio::time::timeout(Duration::from_secs(10), rx_b.recv())
        .await
        .expect("the entry of the consumer whose heartbeat lapsed was lost")
        .expect("B's stream ended");
    assert_eq!(got.envelope().id, sent.id);
    got.ack().await.expect("ack");
    task_b.abort();
    assert!(b.delete_all().await.expect("delete the test's keys") >= 2);
}

mod results {
    use super::*;

    async fn store() -> Arc<pipeline_redis::RedisResultStore> {
        let url = std::env::var("PIPELINE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let ns = pipeline_core::testkit::unique("res");
        Arc::new(
            pipeline_redis::RedisResultStore::connect(&url, &ns)
                .await
                .expect("Redis is unreachable"),
        )
    }

    async fn delete_keys(store: Arc<pipeline_redis::RedisResultStore>) {
        store.delete_all().await.expect("delete the test's keys");
    }

    pipeline_core::results_conformance!(store(), cleanup = delete_keys);
}
