//! MariaDB with a `max_allowed_packet` of 1 MiB (MySQL 5.7's default is
//! 4 MiB): the archive sizes its statements and chunks from the server's
//! limit. Alone in its test binary, because it changes a global of the
//! shared server (restored by a guard, whatever happens).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use pipeline_core::store::sha256_hex;
use pipeline_core::{BlobStore, ImageStore};
use pipeline_sql::SqlArchive;

fn mysql(sql: &str) -> String {
    let args = ["-uroot", "-h127.0.0.1", "-N", "-e", sql];
    pipeline_core::testkit::command("mysql", &args, None)
        .trim()
        .to_string()
}

/// Puts the server's packet limit back.
struct Restore(String);
impl Drop for Restore {
    fn drop(&mut self) {
        mysql(&format!("SET GLOBAL max_allowed_packet = {}", self.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_fit_a_one_mebibyte_packet() {
    let url = std::env::var("PIPELINE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let _restore = Restore(mysql("SELECT @@global.max_allowed_packet"));
    mysql("SET GLOBAL max_allowed_packet = 1048576");
    let ns = pipeline_core::testkit::unique("pkt").replace('-', "_");
    let archive = SqlArchive::connect(&url, &ns).await.expect("connect");
    let outcome = async {
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
    .await;
    archive.drop_tables().await.unwrap();
    outcome
}
