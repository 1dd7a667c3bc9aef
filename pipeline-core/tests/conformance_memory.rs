//! The conformance suites on the in-memory backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryResultStore};

mod broker {
    use super::*;
    pipeline_core::broker_conformance!(async {
        Arc::new(MemoryBroker::with_drain_timeout(
            std::time::Duration::from_secs(5),
        ))
    });
}

mod store {
    use super::*;
    pipeline_core::store_conformance!(async { Arc::new(MemoryArchive::new()) });
}

mod results {
    use super::*;
    pipeline_core::results_conformance!(async { Arc::new(MemoryResultStore::new()) });
}
