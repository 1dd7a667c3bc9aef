//! Worker liveness on Redis: the entries of a consumer whose heartbeat
//! stopped (its process died) move on within the liveness period, while a
//! live consumer keeps its entries however long its job takes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface, StreamsInterface};
use fred::types::Expiration;
use futures::StreamExt;
use pipeline_core::broker::{QueueSpec, Subscription};
use pipeline_core::{Broker, Envelope};
use pipeline_redis::RedisBroker;
use uuid::Uuid;

const LIVENESS_MS: u64 = 1000;

fn url() -> String {
    std::env::var("PIPELINE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A broker whose keys expire after the test, with a 1 s liveness and a
/// claim-by-idleness far beyond the test (so only liveness can move
/// entries).
async fn broker(ns: &str) -> Arc<RedisBroker> {
    let url = format!(
        "{}?liveness_ms={LIVENESS_MS}&claim_idle_ms=600000&key_ttl_s=300",
        url()
    );
    let b = RedisBroker::connect(&url, ns)
        .await
        .expect("Redis is unreachable");
    b.declare(&[QueueSpec::new("work", &["job"], 5)])
        .await
        .unwrap();
    Arc::new(b)
}

async fn raw_client() -> fred::clients::Client {
    let config = fred::types::config::Config::from_url(&url()).unwrap();
    let client = fred::clients::Client::new(config, None, None, None);
    client.init().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_move_on_within_the_liveness_period() {
    let ns = pipeline_core::testkit::unique("live");
    let broker = broker(&ns).await;
    let sent: Vec<Envelope> = (0..5)
        .map(|_| Envelope::new("job", Uuid::now_v7(), "t"))
        .collect();
    for env in &sent {
        broker.publish(env.clone()).await.unwrap();
    }
    // A worker takes every entry, beats once more, and dies: its heartbeat
    // expires 800 ms from now and nothing settles its entries.
    let raw = raw_client().await;
    let stream = format!("{{{ns}.work}}");
    let _: fred::types::Value = raw
        .xreadgroup(
            "pipeline",
            "ghost",
            Some(10),
            None,
            false,
            stream.as_str(),
            ">",
        )
        .await
        .unwrap();
    let _: fred::types::Value = raw
        .set(
            format!("{stream}:alive:ghost"),
            "1",
            Some(Expiration::PX(800)),
            None,
            false,
        )
        .await
        .unwrap();
    let died = Instant::now() + Duration::from_millis(800);

    let mut deliveries = broker
        .subscribe(Subscription::new("work", 10))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("the dead worker's entries never moved on")
            .unwrap()
            .unwrap();
        assert!(Instant::now() >= died, "taken from a live consumer");
        assert_eq!(d.attempt(), 2, "a takeover counts as an attempt");
        got.push(d.envelope().id);
        d.ack().await.unwrap();
    }
    let took = died.elapsed();
    assert!(
        took < Duration::from_millis(LIVENESS_MS + 1000),
        "took {took:?} after the death"
    );
    got.sort();
    let mut want: Vec<Uuid> = sent.iter().map(|e| e.id).collect();
    want.sort();
    assert_eq!(got, want);
    println!("entries of a dead consumer delivered again {took:?} after its heartbeat expired");
    broker.delete_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_keeps_its_entries_through_a_long_job() {
    let ns = pipeline_core::testkit::unique("slow");
    let broker = broker(&ns).await;
    let other = RedisBroker::connect(
        &format!("{}?liveness_ms={LIVENESS_MS}&claim_idle_ms=600000", url()),
        &ns,
    )
    .await
    .unwrap();
    let job = Envelope::new("job", Uuid::now_v7(), "t");
    broker.publish(job.clone()).await.unwrap();
    let mut slow = broker
        .subscribe(Subscription::new("work", 1))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), slow.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, job.id);
    // Another worker watches the queue for ten liveness periods while the
    // first one works on the job.
    let mut watcher = other
        .subscribe(Subscription::new("work", 10))
        .await
        .unwrap();
    let stolen =
        tokio::time::timeout(Duration::from_millis(10 * LIVENESS_MS), watcher.next()).await;
    assert!(
        stolen.is_err(),
        "a live consumer's job was taken: {stolen:?}"
    );
    d.ack().await.unwrap();
    let after = tokio::time::timeout(Duration::from_millis(2 * LIVENESS_MS), watcher.next()).await;
    assert!(after.is_err(), "delivered after its ack: {after:?}");
    drop(watcher);
    broker.delete_all().await.unwrap();
}
