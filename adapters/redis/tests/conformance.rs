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
