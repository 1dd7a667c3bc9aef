//! The archive and blob-store conformance suites on the real PostgreSQL and
//! MariaDB servers.
//!
//! URLs come from `PIPELINE_TEST_POSTGRES_URL` and `PIPELINE_TEST_MYSQL_URL`
//! (defaults: the local servers, database `test`). Each test works in its own
//! namespace and drops its tables at the end. An unreachable server fails
//! the test: a missing server must never pass silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_sql::SqlArchive;

async fn connect(var: &str, default: &str) -> Arc<SqlArchive> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let ns = pipeline_core::testkit::unique("t").replace('-', "_");
    match SqlArchive::connect(&url, &ns).await {
        Ok(a) => Arc::new(a),
        Err(e) => panic!(
            "{var}: cannot reach the test database ({e}); start it (see .ci/run) or set {var}"
        ),
    }
}

/// Drop the test's tables, whether the case passed or not.
async fn drop_tables(archive: Arc<SqlArchive>) {
    if let Err(e) = archive.drop_tables().await {
        eprintln!("warning: could not drop the test tables of {archive:?}: {e}");
    }
}

macro_rules! server_suite {
    ($module:ident, $var:literal, $default:literal) => {
        mod $module {
            use super::*;

            pipeline_core::store_conformance!(connect($var, $default), cleanup = drop_tables);

            mod blobs {
                use super::*;
                pipeline_core::blob_conformance!(connect($var, $default), cleanup = drop_tables);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn identical_blobs_are_stored_once() {
                pipeline_core::testkit::run_case(
                    connect($var, $default).await,
                    |store| async move {
                        let a = pipeline_core::testkit::store::record(
                            "t",
                            b"same original bytes",
                            b"result a",
                        );
                        let b = pipeline_core::testkit::store::record(
                            "t",
                            b"same original bytes",
                            b"result b",
                        );
                        use pipeline_core::ImageStore;
                        store.save(std::slice::from_ref(&a)).await.expect("save a");
                        store.save(&[b, a]).await.expect("save b");
                        assert_eq!(store.image_count().await.expect("count"), 2);
                        assert_eq!(store.blob_count().await.expect("count"), 3);
                    },
                    drop_tables,
                )
                .await;
            }
        }
    };
}

server_suite!(
    postgres,
    "PIPELINE_TEST_POSTGRES_URL",
    "postgres://postgres@127.0.0.1:5432/test"
);
server_suite!(
    mysql,
    "PIPELINE_TEST_MYSQL_URL",
    "mysql://root@127.0.0.1:3306/test"
);
