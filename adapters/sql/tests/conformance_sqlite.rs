//! The archive and blob-store conformance suites on SQLite, one database
//! file per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use pipeline_sql::SqlArchive;

/// A folder for this test process's databases, removed when it exits.
fn base() -> &'static std::path::Path {
    static BASE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        pipeline_core::testkit::run_while_this_process_lives(
            &[],
            &format!("rm -rf '{}'", dir.display()),
        );
        dir
    })
}

async fn sqlite() -> Arc<SqlArchive> {
    let file = base().join(format!("{}.db", pipeline_core::testkit::unique("archive")));
    let url = format!("sqlite://{}?mode=rwc", file.display());
    Arc::new(
        SqlArchive::connect(&url, "pipeline")
            .await
            .expect("connect"),
    )
}

pipeline_core::store_conformance!(sqlite());

mod blobs {
    use super::*;
    pipeline_core::blob_conformance!(sqlite());
}

#[tokio::test]
async fn identical_blobs_are_stored_once() {
    use pipeline_core::ImageStore;
    let store = sqlite().await;
    let a = pipeline_core::testkit::store::record("t", b"same original bytes", b"result a");
    let b = pipeline_core::testkit::store::record("t", b"same original bytes", b"result b");
    store.save(std::slice::from_ref(&a)).await.expect("save a");
    store.save(&[b.clone(), a]).await.expect("save b");
    assert_eq!(store.image_count().await.expect("count"), 2);
    assert_eq!(store.blob_count().await.expect("count"), 3);
}

#[tokio::test]
async fn migrations_are_idempotent_and_namespaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let first = SqlArchive::connect(&url, "ns_one").await.expect("connect");
    let again = SqlArchive::connect(&url, "ns_one")
        .await
        .expect("reconnect");
    let other = SqlArchive::connect(&url, "ns_two")
        .await
        .expect("other namespace");
    use pipeline_core::ImageStore;
    first
        .save(&[pipeline_core::testkit::store::record("t", b"x", b"y")])
        .await
        .expect("save");
    assert_eq!(again.image_count().await.expect("count"), 1);
    assert_eq!(other.image_count().await.expect("count"), 0);
    let bad = SqlArchive::connect(&url, "Bad-Name")
        .await
        .expect_err("bad namespace");
    assert!(bad.to_string().contains("namespace"), "{bad}");
    let scheme = SqlArchive::connect("oracle://x", "p")
        .await
        .expect_err("scheme");
    let scheme = scheme.to_string();
    for known in ["sqlite://", "postgres://", "mysql://", "mariadb://"] {
        assert!(scheme.contains(known), "{scheme}");
    }
}
