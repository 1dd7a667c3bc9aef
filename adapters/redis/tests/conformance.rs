//! The broker conformance suite on the real Redis (`PIPELINE_TEST_REDIS_URL`,
//! default the local server). Each test uses its own namespace. An
//! unreachable server fails the tests. The keys of a test expire five
//! minutes after it declared them.
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

pipeline_core::broker_conformance!(redis());
