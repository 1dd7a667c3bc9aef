//! Redis connections killed (`CLIENT KILL TYPE normal`) while publishing and
//! consuming: nothing is lost. The kill reaches every client of the server,
//! so the test runs a Redis server of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pipeline_core::broker::{QueueSpec, Subscription};
use pipeline_core::testkit::broker::{ack_and_forward, receive_until};
use pipeline_core::{Broker, Envelope};
use pipeline_redis::RedisBroker;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_connections_are_killed() {
    let server = pipeline_core::testkit::servers::Server::start(
        pipeline_core::testkit::servers::Kind::Redis,
        &[],
    );
    let url = server.url();
    let ns = pipeline_core::testkit::unique("kill");
    let broker = Arc::new(
        RedisBroker::connect_with(
            &url,
            &ns,
            Some(Duration::from_secs(300)),
            Duration::from_secs(2),
        )
        .await
        .expect("Redis is unreachable"),
    );
    broker
        .declare(&[QueueSpec::new("work", &["job"], 10)])
        .await
        .unwrap();
    let stream = broker
        .subscribe(Subscription::new("work", 10))
        .await
        .unwrap();
    let (consumer, mut rx) = ack_and_forward(stream);
    let total = 300;
    let publisher = {
        let b = broker.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..total {
                let env = Envelope::new("job", Uuid::now_v7(), "t");
                sent.push(env.id);
                // A publish cut by the kill is an error the caller retries.
                let mut tries = 0;
                while let Err(e) = b.publish(env.clone()).await {
                    tries += 1;
                    assert!(tries < 100, "publish never recovered: {e}");
                    assert!(e.is_retryable(), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let mut seen = HashSet::new();
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(30),
        "stalled",
        |s| s.len() >= total / 3,
    )
    .await;
    let killed = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .output()
        .expect("redis-cli");
    assert!(killed.status.success(), "redis-cli CLIENT KILL: {killed:?}");
    let n: u32 = String::from_utf8_lossy(&killed.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n >= 2, "killed {n} connections");
    assert!(
        !publisher.is_finished(),
        "the kill came after the last publish: the test proves nothing"
    );
    let sent: HashSet<Uuid> = publisher.await.unwrap().into_iter().collect();
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(60),
        "messages missing after the kill",
        |s| sent.is_subset(s),
    )
    .await;
    assert!(broker.ready().await.is_ok());
    consumer.abort();
    broker.delete_all().await.expect("delete the test's keys");
}
