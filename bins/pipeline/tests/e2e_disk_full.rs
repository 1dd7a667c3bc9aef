//! A full disk loses nothing: the archive (SQLite) and the blob store
//! (files) on a 3 MiB tmpfs this test mounts. Jobs keep being accepted
//! and transformed; save2db holds what it cannot write (never
//! dead-lettered); an upload that needs the blob store gets 507 with
//! `Retry-After`; once the disk is grown every job is archived.
//!
//! Mounting needs root (the CI machine runs as root); without it the test
//! fails and says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, client, error_code};
use image::{DynamicImage, ImageFormat, RgbImage};

const JOBS: usize = 40;

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An incompressible PNG of about 3 x `side`² bytes.
fn noise_png(side: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let img = RgbImage::from_fn(side, side, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *c = state as u8;
        }
        image::Rgb(px)
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

async fn archived(server: &Server) -> usize {
    let list: serde_json::Value = client()
        .get(server.url("/v1/images?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_archive_and_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&work.path().join("disk"), "3m");
    let db = format!("sqlite://{}?mode=rwc", disk.0.join("archive.db").display());
    let blobs = format!("file://{}", disk.0.join("blobs").display());
    let mut server = Server::start_on(
        Some(&db),
        &[
            "--blob-url",
            &blobs,
            "--inline-max",
            "100000",
            "--default-transform",
            "grayscale",
        ],
    );
    let http = client();
    // About 30 KB each, and 10 KB of result: some 40 KB per archived job.
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let r = http
            .post(server.url("/v1/images"))
            .header("content-type", "image/png")
            .body(noise_png(100, n as u32 + 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "upload {n}");
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["images"][0]["id"].as_str().unwrap().to_string());
    }
    // Every job is transformed and served while the archive is full.
    for id in &ids {
        let r = http
            .get(server.url(&format!("/v1/images/{id}/result?wait=30")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
    }
    let before = archived(&server).await;
    assert!(before < JOBS, "the disk never filled: {before} archived");
    // A file for the blob store cannot be written: 507, retry later.
    let big = noise_png(250, 99);
    assert!(big.len() > 100_000);
    let r = http
        .post(server.url("/v1/images"))
        .header("content-type", "image/png")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (507, "insufficient_storage".into()));

    // Room again: save2db writes what it held.
    disk.grow("64m");
    let started = Instant::now();
    let mut now = before;
    while now < JOBS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{now} of {JOBS} archived 60 s after the disk grew"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = archived(&server).await;
    }
    eprintln!(
        "{before} of {JOBS} archived on the full disk; all {JOBS} {:.1} s after it grew",
        started.elapsed().as_secs_f64()
    );
    // None was given up: no job carries an archive failure.
    for id in &ids {
        let status: serde_json::Value = http
            .get(server.url(&format!("/v1/images/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(status.get("archive_error").is_none(), "{status}");
    }
    let r = http
        .post(server.url("/v1/images"))
        .header("content-type", "image/png")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    server.stop();
}
