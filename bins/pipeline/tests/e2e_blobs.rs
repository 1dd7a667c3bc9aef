//! The claim check in one `pipeline serve` process (memory broker, SQLite
//! archive as the blob store), then `pipeline gc-blobs` on its archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, image_bytes};
use image::ImageFormat;
use pipeline_core::store::sha256_hex;
use pipeline_core::{BlobStore, ImageStore};

#[allow(unused_imports)]
use pipeline_core::ActivityLog;

async fn upload(http: &reqwest::Client, server: &Server, data: Vec<u8>, spec: &str) -> String {
    let r = http
        .post(server.url(&format!("/v1/images?transform={spec}")))
        .header("content-type", "image/png")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["images"][0]["id"].as_str().unwrap().to_string()
}

async fn finished(http: &reqwest::Client, server: &Server, id: &str) -> (u16, Bytes) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(server.url(&format!("/v1/images/{id}/result?wait=10")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 202 {
            return (status, r.bytes().await.unwrap());
        }
        assert!(Instant::now() < deadline, "job {id} not finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_by_reference_to_the_archive_table() {
    by_reference_then_collect("archive".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_by_reference_to_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    by_reference_then_collect(format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_by_reference_to_s3() {
    by_reference_then_collect(pipeline_object_store::testkit::bucket_url("blobs").await).await;
}

/// Run jobs with every original above 2 KB sent by reference through
/// `blob_url`, check them, then collect an orphan with `pipeline gc-blobs`.
async fn by_reference_then_collect(blob_url: String) {
    let in_archive = blob_url == "archive";
    let mut server = Server::start(&["--inline-max", "2000", "--blob-url", &blob_url]);
    let http = pipeline::cli::http_client_builder().build().unwrap();
    let originals: Vec<Vec<u8>> = (0..4)
        .map(|i| image_bytes(ImageFormat::Png, 320, 240, i * 40))
        .collect();
    assert!(originals.iter().all(|o| o.len() > 2000));
    let mut ids = Vec::new();
    for o in &originals {
        ids.push(upload(&http, &server, o.clone(), "resize:64x48").await);
    }
    // A job that fails in the transformer: its original is archived too.
    let failing = upload(
        &http,
        &server,
        originals[0].clone(),
        "crop:5000x5000%2B0%2B0",
    )
    .await;
    for id in &ids {
        let (status, body) = finished(&http, &server, id).await;
        assert_eq!(status, 200);
        let img = image::load_from_memory(&body).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
    }
    assert_eq!(finished(&http, &server, &failing).await.0, 422);
    // /readyz covers the blob store: a directory that goes away shows.
    let ready = |http: reqwest::Client, url: String| async move {
        http.get(url).send().await.unwrap().status().as_u16()
    };
    assert_eq!(ready(http.clone(), server.url("/readyz")).await, 200);
    if let Some(dir) = blob_url.strip_prefix("file://") {
        let moved = format!("{dir}.moved");
        std::fs::rename(dir, &moved).unwrap();
        assert_eq!(ready(http.clone(), server.url("/readyz")).await, 503);
        std::fs::rename(&moved, dir).unwrap();
        assert_eq!(ready(http.clone(), server.url("/readyz")).await, 200);
    }
    server.stop();

    let db = server.database_url();
    let archive = pipeline_sql::SqlArchive::connect(&db, "pipeline")
        .await
        .unwrap();
    assert_eq!(archive.image_count().await.unwrap(), 5);
    let blobs: std::sync::Arc<dyn BlobStore> = if in_archive {
        std::sync::Arc::new(archive.clone())
    } else {
        pipeline::backends::compiled()
            .connect_blobs(&blob_url, &pipeline::ConnectOptions::new("pipeline"))
            .await
            .unwrap()
    };
    let claim = pipeline_core::ClaimCheck::new(blobs.clone(), 2000);
    for (id, o) in ids.iter().zip(&originals) {
        let back = archive
            .original(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let is_ref = pipeline_core::BlobRef::of_blob(&back).unwrap().is_some();
        // Elsewhere than in its own table, the archive keeps the reference.
        assert_eq!(is_ref, !in_archive, "original of {id}");
        let back = claim.resolve(back).await.unwrap();
        assert!(back.data == o.as_slice(), "original of {id} differs");
        assert!(blobs.get(&sha256_hex(o)).await.unwrap().is_some());
    }
    // An orphan: an original stored by an API that died before publishing.
    let orphan = image_bytes(ImageFormat::Png, 300, 200, 7);
    let orphan_key = sha256_hex(&orphan);
    blobs
        .put(&orphan_key, "image/png", Bytes::from(orphan))
        .await
        .unwrap();
    let count = || async { blobs.stored_before(i64::MAX).await.unwrap().len() };
    let blobs_before = count().await;

    let gc = |dry: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        cmd.args(["gc-blobs", "--database-url", &db, "--older-than-hours", "0"])
            .args(["--blob-url", &blob_url]);
        if dry {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dry = gc(true);
    assert!(dry.contains("1 orphans to remove"), "{dry}");
    assert_eq!(count().await, blobs_before);
    let done = gc(false);
    assert!(done.contains("1 orphans removed"), "{done}");
    assert_eq!(count().await, blobs_before - 1);
    assert!(blobs.get(&orphan_key).await.unwrap().is_none());
    // Everything a job points to is still there.
    for id in ids.iter().chain([&failing]) {
        let original = archive
            .original(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        claim.resolve(original).await.unwrap();
    }
    for id in &ids {
        let result = archive.result(id.parse().unwrap()).await.unwrap().unwrap();
        claim.resolve(result).await.unwrap();
    }
    let again = gc(false);
    assert!(again.contains("0 orphans removed"), "{again}");
}

#[test]
fn bench_archive_measures_bytes_and_references() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["bench-archive", "--database-url", &db])
        .args([
            "--records",
            "40",
            "--batch",
            "8",
            "--writers",
            "2",
            "--blob-bytes",
            "5000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("(bytes in the archive):"), "{text}");
    assert!(text.contains("(claim-check references):"), "{text}");
    assert_eq!(text.matches(" rows/s").count(), 2, "{text}");
}

#[test]
fn bad_claim_check_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {extra:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--blob-url", "ftp://host/x"]);
    assert!(err.contains("unsupported blob store URL"), "{err}");
    assert!(err.contains("s3://") && err.contains("`archive`"), "{err}");
    // Redis takes messages up to 512 MiB: two 300 MB parts cannot fit.
    let err = run(&[
        "--broker-url",
        "redis://127.0.0.1:6379",
        "--inline-max",
        "300000000",
    ]);
    assert!(err.contains("PIPELINE_INLINE_MAX=300000000"), "{err}");
    let err = run(&["--blob-url", "s3://"]);
    assert!(err.contains("no bucket"), "{err}");
}
