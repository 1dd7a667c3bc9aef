//! The broker, result-store and blob-store suites on NATS JetStream: a
//! `nats-server` of the test's own (`testkit::servers`, JetStream on, `max_payload` 64 MiB so
//! the suite's 20 MB message fits; the machine's server keeps the 1 MB
//! default, which the broker reports as its limit). Each test uses its own
//! namespace, deleted at the end, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use pipeline_core::testkit::servers::{Kind, Server};
use pipeline_nats::NatsBroker;

/// One server for the whole test binary (stopped when the process exits).
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(Kind::Nats, &[]))
}

async fn nats() -> Arc<NatsBroker> {
    let url = std::env::var("PIPELINE_TEST_NATS_URL").unwrap_or_else(|_| server().url());
    let ns = pipeline_core::testkit::unique("conf");
    match NatsBroker::connect(&url, &ns, &ns).await {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("NATS at {url} is unreachable ({e})"),
    }
}

async fn delete_stream(broker: Arc<NatsBroker>) {
    broker.delete_all().await.expect("delete the test's stream");
}

pipeline_core::broker_conformance!(nats(), cleanup = delete_stream);

mod results {
    use super::*;
    use pipeline_nats::NatsResultStore;

    async fn store() -> Arc<NatsResultStore> {
        let url = std::env::var("PIPELINE_TEST_NATS_URL").unwrap_or_else(|_| server().url());
        let ns = pipeline_core::testkit::unique("res");
        Arc::new(
            NatsResultStore::connect(&url, &ns, &ns)
                .await
                .unwrap_or_else(|e| panic!("NATS at {url} is unreachable ({e})")),
        )
    }

    async fn delete_bucket(store: Arc<NatsResultStore>) {
        store.delete_all().await.expect("delete the test's bucket");
    }

    pipeline_core::results_conformance!(store(), cleanup = delete_bucket);
}

mod blobs {
    use super::*;
    use pipeline_nats::NatsBlobStore;

    async fn store() -> Arc<NatsBlobStore> {
        let url = std::env::var("PIPELINE_TEST_NATS_URL").unwrap_or_else(|_| server().url());
        let ns = pipeline_core::testkit::unique("blob");
        Arc::new(
            NatsBlobStore::connect(&url, &ns, &ns)
                .await
                .unwrap_or_else(|e| panic!("NATS at {url} is unreachable ({e})")),
        )
    }

    async fn delete_bucket(store: Arc<NatsBlobStore>) {
        store.delete_all().await.expect("delete the test's bucket");
    }

    pipeline_core::blob_conformance!(store(), cleanup = delete_bucket);
}
