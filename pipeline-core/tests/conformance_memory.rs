//! The conformance suites on the in-memory backends (and the file blob store).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_core::memory::{MemoryArchive, MemoryBlobStore, MemoryBroker, MemoryResultStore};

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

mod blobs {
    use super::*;
    pipeline_core::blob_conformance!(async { Arc::new(MemoryBlobStore::new()) });
}

mod file_blobs {
    use super::*;
    use pipeline_core::blob::FileBlobStore;

    async fn store() -> Arc<FileBlobStore> {
        let dir = std::env::temp_dir().join(pipeline_core::testkit::unique("blobs"));
        Arc::new(FileBlobStore::open(dir).await.unwrap())
    }

    pipeline_core::blob_conformance!(
        store(),
        cleanup = |s: Arc<FileBlobStore>| async move {
            let _ = std::fs::remove_dir_all(s.root());
        }
    );
}

mod transforms {
    /// Every built-in operation passes the transform suite.
    #[test]
    fn builtins_pass_the_transform_suite() {
        pipeline_core::testkit::transform::check_registry(
            &pipeline_core::TransformRegistry::with_builtins(),
        );
    }
}
