//! The broker conformance suite on the real RabbitMQ (`PIPELINE_TEST_AMQP_URL`,
//! default the local server). Each test uses its own namespace; its queues
//! expire on the server a minute after last use. An unreachable server
//! fails the tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_rabbitmq::RabbitBroker;

/// The RabbitMQ URL of the suite, with queues that expire.
pub fn url() -> String {
    let base = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}expires_ms=60000&publish_timeout_ms=20000")
}

async fn rabbit_with(options: &str) -> Arc<RabbitBroker> {
    let ns = pipeline_core::testkit::unique("conf");
    let url = format!("{}{options}", url());
    match RabbitBroker::connect(&url, &ns, &format!("{ns}-test")).await {
        Ok(b) => Arc::new(b),
        Err(e) => panic!(
            "RabbitMQ is unreachable ({e}); start it (see .ci/run) or set PIPELINE_TEST_AMQP_URL"
        ),
    }
}

// Classic queues (the default; quorum queues run the same suite in
// `conformance_quorum.rs`); every case deletes its queues as it ends.
pipeline_core::broker_conformance!(
    rabbit_with(""),
    cleanup = |b: Arc<RabbitBroker>| async move {
        let _ = b.delete_all().await;
    }
);

/// `queue_version=2` declares classic queues with version 2 storage: they
/// carry messages, and a broker that declares the same queues without the
/// option is refused by the server for that very argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_version_2_is_declared_on_the_server() {
    use pipeline_core::broker::{Broker, QueueSpec, Subscription};
    use pipeline_core::envelope::Envelope;
    let ns = pipeline_core::testkit::unique("qv");
    let spec = QueueSpec::new("work", &["job.done"], 3);
    let v2 = RabbitBroker::connect(&format!("{}&queue_version=2", url()), &ns, "qv-test")
        .await
        .expect("connect");
    v2.declare(std::slice::from_ref(&spec))
        .await
        .expect("declare v2");
    let sent = Envelope::new("job.done", uuid::Uuid::now_v7(), "t");
    v2.publish(sent.clone()).await.expect("publish");
    let mut s = v2
        .subscribe(Subscription::new("work", 1))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        futures::StreamExt::next(&mut s),
    )
    .await
    .expect("no delivery")
    .expect("stream ended")
    .expect("delivery");
    assert_eq!(d.envelope().id, sent.id);
    d.ack().await.expect("ack");
    let default = RabbitBroker::connect(&url(), &ns, "qv-test-2")
        .await
        .expect("connect");
    let err = default
        .declare(std::slice::from_ref(&spec))
        .await
        .expect_err("the server must refuse another queue version");
    assert!(err.to_string().contains("x-queue-version"), "{err}");
    let _ = v2.delete_all().await;
}

/// A queue declared without parts gets, from the server itself, small
/// copies without the parts: it is bound to the exchange of those copies,
/// and unbound from the main exchange where an earlier version bound it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_parts_is_sent_copies_without_them() {
    use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use pipeline_core::broker::{Broker, QueueSpec};
    use pipeline_core::envelope::{Envelope, Part};
    let ns = pipeline_core::testkit::unique("noparts");
    let b = RabbitBroker::connect(&url(), &ns, "noparts-test")
        .await
        .expect("connect");
    // As an earlier version left it: the queue bound to the main exchange.
    let base = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    b.declare(&[QueueSpec::new("whole", &["job.#"], 3)])
        .await
        .expect("declare");
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongLongInt(60_000),
    );
    let log = format!("{ns}.log");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(log.clone().into(), durable, args)
        .await
        .expect("declare the old queue");
    ch.queue_bind(
        log.clone().into(),
        ns.clone().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("old binding");
    b.declare(&[QueueSpec::new("log", &["#"], 3).without_parts()])
        .await
        .expect("declare without parts");
    let sent = Envelope::new("job.done", uuid::Uuid::now_v7(), "t").with_part(Part::new(
        "original",
        "image/png",
        bytes::Bytes::from(vec![1u8; 100_000]),
    ));
    b.publish(sent.clone()).await.expect("publish");
    // Routed only to the queue without parts: still accepted.
    b.publish(Envelope::new("other.event", uuid::Uuid::now_v7(), "t"))
        .await
        .expect("a key only the queue without parts is bound to");
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bodies.len() < 2 && std::time::Instant::now() < deadline {
        match ch
            .basic_get(log.clone().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            Some(m) => bodies.push(m.delivery.data.len()),
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert_eq!(bodies.len(), 2, "copies in the queue without parts");
    assert!(bodies[0] < 2_000, "the server sent {} bytes", bodies[0]);
    // One copy each: nothing more comes through the old binding.
    let extra = ch
        .basic_get(log.clone().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(extra.is_none(), "a second copy arrived");
    let _ = b.delete_all().await;
    let _ = ch
        .queue_delete(log.into(), lapin::options::QueueDeleteOptions::default())
        .await;
}
