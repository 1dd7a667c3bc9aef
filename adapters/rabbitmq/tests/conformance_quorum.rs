//! The broker conformance suite on RabbitMQ quorum queues (replicated; the
//! server's delivery limit as a net). Each case deletes its queues as it
//! ends rather than leaving Raft groups to expire together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_rabbitmq::RabbitBroker;

async fn rabbit_quorum() -> Arc<RabbitBroker> {
    let base = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}expires_ms=60000&publish_timeout_ms=60000&queue_type=quorum");
    let ns = pipeline_core::testkit::unique("quorum");
    match RabbitBroker::connect(&url, &ns, &format!("{ns}-test")).await {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("RabbitMQ is unreachable ({e})"),
    }
}

pipeline_core::broker_conformance!(
    rabbit_quorum(),
    cleanup = |b: Arc<RabbitBroker>| async move {
        let _ = b.delete_all().await;
    }
);
