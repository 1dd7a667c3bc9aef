//! The archive conformance suite on the real PostgreSQL and MariaDB servers.
//!
//! URLs come from `PIPELINE_TEST_POSTGRES_URL` and `PIPELINE_TEST_MYSQL_URL`
//! (defaults: the local servers, database `test`). Each test works in its own
//! namespace and drops its tables at the end. An unreachable server fails
//! the test: a missing server must never pass silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_sql::SqlArchive;

/// An archive in a fresh namespace; its tables are dropped when the guard goes.
struct Fresh(Arc<SqlArchive>);

impl Drop for Fresh {
    fn drop(&mut self) {
        let archive = self.0.clone();
        // Cleanup needs the runtime the test ran on, which is ending: use a
        // small one of our own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(archive.drop_tables()).ok()
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            eprintln!("warning: could not drop the test tables of {:?}", self.0);
        }
    }
}

async fn connect(var: &str, default: &str) -> Fresh {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let ns = pipeline_core::testkit::unique("t").replace('-', "_");
    match SqlArchive::connect(&url, &ns).await {
        Ok(a) => Fresh(Arc::new(a)),
        Err(e) => panic!(
            "{var}: cannot reach the test database ({e}); start it (see .ci/run) or set {var}"
        ),
    }
}

macro_rules! server_suite {
    ($module:ident, $var:literal, $default:literal) => {
        mod $module {
            use super::*;
            use pipeline_core::{ActivityLog, ImageStore};

            async fn make() -> (Fresh, Arc<SqlArchive>) {
                let f = connect($var, $default).await;
                let a = f.0.clone();
                (f, a)
            }

            macro_rules! case {
                ($case:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let (_guard, a) = make().await;
                        pipeline_core::testkit::store::$case(
                            a.clone() as Arc<dyn ImageStore>,
                            a as Arc<dyn ActivityLog>,
                        )
                        .await;
                    }
                };
            }
            case!(save_and_read_back);
            case!(unknown_job_is_none);
            case!(save_is_idempotent_under_double_delivery);
            case!(concurrent_double_saves);
            case!(identical_blobs_are_shared);
            case!(failed_jobs_are_kept);
            case!(list_by_tenant_with_cursor);
            case!(large_blobs);
            case!(activity_is_idempotent);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn identical_blobs_are_stored_once() {
                let (_guard, store) = make().await;
                let a =
                    pipeline_core::testkit::store::record("t", b"same original bytes", b"result a");
                let b =
                    pipeline_core::testkit::store::record("t", b"same original bytes", b"result b");
                store.save(std::slice::from_ref(&a)).await.expect("save a");
                store.save(&[b, a]).await.expect("save b");
                assert_eq!(store.image_count().await.expect("count"), 2);
                assert_eq!(store.blob_count().await.expect("count"), 3);
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
