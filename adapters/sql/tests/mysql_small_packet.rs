//! MariaDB with a `max_allowed_packet` of 1 MiB (MySQL 5.7's default is
//! 4 MiB): the archive sizes its statements and chunks from the server's
//! limit. The test runs a MariaDB server of its own started with that
//! limit, so the shared server's settings are never touched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use pipeline_core::store::sha256_hex;
use pipeline_core::testkit::servers::{Kind, Server};
use pipeline_core::{BlobStore, ImageStore};
use pipeline_sql::SqlArchive;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_fit_a_one_mebibyte_packet() {
    let server = Server::start(Kind::MariaDb, &["--max-allowed-packet=1M"]);
    let packet = pipeline_core::testkit::command(
        "mariadb",
        &[
            "--no-defaults",
            "-uroot",
            "-h127.0.0.1",
            &format!("-P{}", server.port()),
            "-N",
            "-e",
            "SELECT @@global.max_allowed_packet",
        ],
        None,
    );
    assert_eq!(packet.trim(), "1048576", "the server's limit");
    let ns = pipeline_core::testkit::unique("pkt");
    let archive = SqlArchive::connect(&server.url(), &ns)
        .await
        .expect("connect");
    // A 10 MB blob through the blob store (chunks of 512 KiB)...
    let mut big = vec![0u8; 10_000_000];
    fastrand::fill(&mut big);
    let key = sha256_hex(&big);
    archive
        .put(&key, "image/png", Bytes::from(big.clone()))
        .await
        .unwrap();
    assert!(BlobStore::get(&archive, &key).await.unwrap().unwrap().data == big);
    // ...and a batch of records whose blobs together exceed the packet.
    let records: Vec<_> = (0..6u8)
        .map(|i| {
            let original = vec![i; 400_000];
            let result = vec![i.wrapping_add(100); 300_000];
            pipeline_core::testkit::store::record("t", &original, &result)
        })
        .collect();
    archive.save(&records).await.unwrap();
    for r in &records {
        let back = archive.original(r.job_id).await.unwrap().unwrap();
        assert_eq!(back.data, r.original.as_ref().unwrap().data);
    }
}
