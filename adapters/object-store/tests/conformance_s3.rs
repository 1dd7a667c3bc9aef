//! The blob-store suite on an S3 endpoint: no S3 service is reachable from
//! the test machines, so the suite runs against `moto_server` (started by
//! [`pipeline_object_store::testkit`]; `.ci/run` installs it with pip) or
//! against `PIPELINE_TEST_S3_ENDPOINT`. A missing server fails the tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_object_store::ObjectBlobStore;

async fn store() -> Arc<ObjectBlobStore> {
    let url = pipeline_object_store::testkit::bucket_url("blobs").await;
    Arc::new(ObjectBlobStore::from_url(&url).unwrap())
}

pipeline_core::blob_conformance!(store());

#[test]
fn bad_urls_are_configuration_errors() {
    for url in ["s3://", "http://bucket/x", "s3://b/p?nonsense=1"] {
        let err = ObjectBlobStore::from_url(url).unwrap_err();
        assert!(
            matches!(err, pipeline_core::Error::Config(_)),
            "{url}: {err}"
        );
    }
}
