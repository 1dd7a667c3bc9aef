//! RabbitMQ beyond the shared suite: connections closed under load (on a
//! RabbitMQ node of the test's own), malformed frames. (The suite on quorum queues is `conformance_quorum.rs`,
//! its own binary, so its Raft churn never runs beside these.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pipeline_core::broker::{QueueSpec, Subscription, dead_letter_queue};
use pipeline_core::envelope::headers;
use pipeline_core::testkit::broker::{ack_and_forward, receive_until};
use pipeline_core::testkit::servers::{Kind, Server};
use pipeline_core::{Broker, Envelope, Part};
use pipeline_rabbitmq::RabbitBroker;
use uuid::Uuid;

fn shared_url() -> String {
    std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn connect(base: &str, extra: &str) -> (RabbitBroker, String) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}expires_ms=60000&publish_timeout_ms=60000{extra}");
    let ns = pipeline_core::testkit::unique("res");
    let b = RabbitBroker::connect(&url, &ns, &format!("{ns}-conn"))
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is unreachable ({e})"));
    (b, ns)
}

/// Close every connection of `server` whose client name contains `needle`.
fn close_connections(server: &Server, needle: &str) -> usize {
    let text = server.rabbitmqctl(&["list_connections", "pid", "client_properties"]);
    let names: Vec<String> = text
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    for name in &names {
        server.rabbitmqctl(&["close_connection", name, "resilience test"]);
    }
    names.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_connection_is_closed_under_load() {
    let server = Server::start(Kind::RabbitMq, &[]);
    let (broker, ns) = connect(&server.url(), "").await;
    let broker = Arc::new(broker);
    broker
        .declare(&[QueueSpec::new("work", &["job.*"], 5)])
        .await
        .unwrap();
    let stream = broker
        .subscribe(Subscription::new("work", 20))
        .await
        .unwrap();
    let total = 400;
    let (consumer, mut rx) = ack_and_forward(stream);
    // The last quarter is published only once the cut happened, so the cut
    // always lands in the traffic (an event, not a race with the clock).
    let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
    let publisher = {
        let b = broker.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..total {
                if n == total * 3 / 4 {
                    let _ = cut_rx.wait_for(|cut| *cut).await;
                }
                let env = Envelope::new("job.x", Uuid::now_v7(), "t").with_part(Part::new(
                    "p",
                    "application/octet-stream",
                    Bytes::from(vec![n as u8; 2048]),
                ));
                sent.push(env.id);
                b.publish(env)
                    .await
                    .expect("publish survives the reconnect");
                // Spread the traffic so the cut lands in the middle of it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    // Let some traffic flow, then cut the adapter's connection.
    let mut seen = HashSet::new();
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(30),
        "stalled",
        |s| s.len() >= total / 4,
    )
    .await;
    let closed = close_connections(&server, &ns);
    assert!(closed >= 1, "no connection of {ns} found");
    cut_tx.send_replace(true);
    let sent: HashSet<Uuid> = publisher.await.unwrap().into_iter().collect();
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(60),
        "messages missing after the reconnect",
        |s| sent.is_subset(s),
    )
    .await;
    let mut ready = broker.ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ready.is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = broker.ready().await;
    }
    assert!(ready.is_ok(), "ready again after recovery: {ready:?}");
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_goes_to_the_dead_letter_queue_and_the_queue_flows_on() {
    let (broker, ns) = connect(&shared_url(), "").await;
    broker
        .declare(&[QueueSpec::new("work", &["job.*"], 3)])
        .await
        .unwrap();
    // Garbage straight onto the queue, then a good message behind it.
    let conn = lapin::Connection::connect(&shared_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // With confirms, the garbage is in the queue before the good message
    // is published (without, the two channels could enqueue them the other
    // way round, and nothing would ever read the garbage).
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let garbage = b"PPLN\x01\x00\xff\xff\xff\xff not a frame".to_vec();
    ch.basic_publish(
        "".into(),
        broker.queue_name("work").into(),
        lapin::options::BasicPublishOptions::default(),
        &garbage,
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let good = Envelope::new("job.ok", Uuid::now_v7(), "t");
    broker.publish(good.clone()).await.unwrap();

    let mut work = broker
        .subscribe(Subscription::new("work", 5))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), work.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, good.id, "the good message is not blocked");
    d.ack().await.unwrap();

    let mut dead = broker
        .subscribe(Subscription::new(dead_letter_queue("work"), 5))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().event, "pipeline.malformed");
    assert_eq!(
        d.envelope().part("frame").unwrap().data.as_ref(),
        garbage.as_slice()
    );
    let reason = d
        .envelope()
        .header(headers::DEAD_LETTER_REASON)
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("cannot decode"), "{reason}");
    d.ack().await.unwrap();
    drop(ns);
}
