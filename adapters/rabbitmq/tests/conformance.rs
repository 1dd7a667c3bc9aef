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
