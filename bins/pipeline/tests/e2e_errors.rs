//! End to end: bad input of every kind gets a clear 4xx and the server
//! keeps serving; operator presets reach the catalogue and the uploads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, client, error_code, image_bytes};
use image::ImageFormat;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-upload-bytes", "200000"]);
    let http = client();
    let jpeg = image_bytes(ImageFormat::Jpeg, 64, 64, 9);
    let mut cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = Vec::new();
    let post = |q: &str| http.post(server.url(&format!("/v1/images{q}")));

    cases.push((
        "no file field",
        post("").multipart(reqwest::multipart::Form::new().text("note", "hi")),
        400,
        "no_file",
    ));
    cases.push((
        "prototype without image field",
        http.post(server.url("/image"))
            .multipart(reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(jpeg.clone()).file_name("a.jpg"),
            )),
        400,
        "no_file",
    ));
    cases.push((
        "empty body",
        post("").header("content-type", "image/jpeg"),
        400,
        "empty_file",
    ));
    cases.push((
        "not an image",
        post("")
            .header("content-type", "image/png")
            .body("this is text"),
        415,
        "not_an_image",
    ));
    cases.push((
        "not an image (prototype)",
        http.post(server.url("/image"))
            .multipart(reqwest::multipart::Form::new().part(
                "image",
                reqwest::multipart::Part::bytes(b"GIF89 nope".to_vec()).file_name("a.gif"),
            )),
        415,
        "not_an_image",
    ));
    let mut truncated = jpeg.clone();
    truncated.truncate(jpeg.len() / 2);
    cases.push((
        "truncated jpeg",
        post("")
            .header("content-type", "image/jpeg")
            .body(truncated),
        422,
        "corrupt_image",
    ));
    let png = image_bytes(ImageFormat::Png, 64, 64, 3);
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(60).take(40) {
        *b ^= 0x5A;
    }
    cases.push((
        "corrupt png",
        post("").header("content-type", "image/png").body(corrupt),
        422,
        "corrupt_image",
    ));
    let mut ico = vec![0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0];
    ico.extend(40u32.to_le_bytes());
    ico.extend(22u32.to_le_bytes());
    ico.extend([0u8; 40]);
    cases.push((
        "unsupported format",
        post("").header("content-type", "image/x-icon").body(ico),
        415,
        "unsupported_format",
    ));
    // A tiny PNG whose header declares 100000 x 100000 pixels.
    let mut bomb = image_bytes(ImageFormat::Png, 1, 1, 0);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    cases.push((
        "pixel bomb",
        post("")
            .header("content-type", "image/png")
            .body(bomb.clone()),
        422,
        "too_many_pixels",
    ));
    cases.push((
        "pixel bomb (prototype)",
        http.post(server.url("/image"))
            .multipart(reqwest::multipart::Form::new().part(
                "image",
                reqwest::multipart::Part::bytes(bomb).file_name("b.png"),
            )),
        422,
        "too_many_pixels",
    ));
    let big = vec![0xFFu8; 300_000];
    cases.push((
        "over the byte limit",
        post("")
            .header("content-type", "image/jpeg")
            .body(big.clone()),
        413,
        "payload_too_large",
    ));
    cases.push((
        "over the byte limit (multipart)",
        post("").multipart(reqwest::multipart::Form::new().part(
            "files",
            reqwest::multipart::Part::bytes(big).file_name("big.jpg"),
        )),
        413,
        "payload_too_large",
    ));
    cases.push((
        "unknown transform",
        post("?transform=explode")
            .header("content-type", "image/jpeg")
            .body(jpeg.clone()),
        400,
        "invalid_input",
    ));
    cases.push((
        "malformed transform",
        post("?transform=resize%3A12xx")
            .header("content-type", "image/jpeg")
            .body(jpeg.clone()),
        400,
        "invalid_input",
    ));
    cases.push((
        "malformed JSON transform",
        post("?transform=%5B%7B%22op%22")
            .header("content-type", "image/jpeg")
            .body(jpeg.clone()),
        400,
        "invalid_input",
    ));
    cases.push((
        "unknown preset",
        post("?preset=poster")
            .header("content-type", "image/jpeg")
            .body(jpeg.clone()),
        400,
        "invalid_input",
    ));
    cases.push((
        "wrong content type",
        post("").header("content-type", "text/plain").body("x"),
        415,
        "unsupported_media_type",
    ));
    cases.push((
        "unknown id",
        http.get(server.url(&format!("/v1/images/{}", Uuid::now_v7()))),
        404,
        "not_found",
    ));
    cases.push((
        "unknown id result",
        http.get(server.url(&format!("/v1/images/{}/result", Uuid::now_v7()))),
        404,
        "not_found",
    ));
    cases.push((
        "unknown id (prototype)",
        http.get(server.url(&format!("/image/{}", Uuid::now_v7()))),
        404,
        "not_found",
    ));
    cases.push((
        "malformed id",
        http.get(server.url("/image/not-an-id")),
        404,
        "not_found",
    ));

    for (name, req, status, code) in cases {
        let resp = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        if resp.status() == 413 {
            // The unread rest of the body makes the connection unusable.
            let connection = resp.headers().get("connection").map(|v| v.as_bytes());
            assert_eq!(connection, Some(&b"close"[..]), "{name}");
        }
        let (got_status, got_code) = error_code(resp).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{name}");
        let health = http
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200, "server down after {name}");
    }
    // Still accepting good work.
    let resp = post("")
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 202);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_presets_reach_the_catalogue_and_the_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presets");
    std::fs::write(
        &file,
        "# ours\ntiny = thumbnail:8x8, format:png\nthumbnail = grayscale   # replaces the built-in\n",
    )
    .unwrap();
    let server = Server::start(&[
        "--preset",
        "wide=resize:40x10:exact;gray=grayscale",
        "--presets-file",
        file.to_str().unwrap(),
    ]);
    let http = client();
    let catalogue: Value = http
        .get(server.url("/v1/transforms"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let presets: std::collections::HashMap<String, String> = catalogue["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["spec"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(presets["wide"], "resize:40x10:exact");
    assert_eq!(presets["gray"], "grayscale");
    assert_eq!(presets["tiny"], "thumbnail:8x8, format:png");
    assert_eq!(
        presets["thumbnail"], "grayscale",
        "the operator's replaces the built-in"
    );
    assert_eq!(
        presets["web"],
        "auto-orient,resize:1600x1600,format:jpeg:82"
    );
    assert!(catalogue["operations"].as_array().unwrap().len() >= 13);

    let jpeg = image_bytes(ImageFormat::Jpeg, 64, 64, 3);
    for (preset, dims, format) in [
        ("wide", (40, 10), ImageFormat::Jpeg),
        ("tiny", (8, 8), ImageFormat::Png),
    ] {
        let answer: Value = http
            .post(server.url(&format!("/v1/images?preset={preset}")))
            .header("content-type", "image/jpeg")
            .body(jpeg.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["images"][0]["id"].as_str().expect("accepted");
        let result = http
            .get(server.url(&format!("/v1/images/{id}/result?wait=30")))
            .send()
            .await
            .unwrap();
        assert_eq!(result.status(), 200, "{preset}");
        let bytes = result.bytes().await.unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{preset}");
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), dims, "{preset}");
    }
}

#[test]
fn a_bad_preset_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    for (preset, needle) in [
        ("broken=resize:axb", "preset \"broken\""),
        ("noequals", "expected name=spec"),
        ("Bad Name=grayscale", "the name must be"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
            .args(["--preset", preset])
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {preset:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{preset}: {err}");
    }
}

/// `pipeline expire`: refused while retention is off; with a retention,
/// removes the old job and the blob only it used, keeps the new job and the
/// original the two share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_removes_old_jobs_only_when_retention_is_set() {
    use pipeline_core::ImageStore;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let expire = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
        cmd.args(["expire", "--database-url", &db])
            .args(extra)
            .env_remove("PIPELINE_RETENTION_DAYS");
        cmd.output().unwrap()
    };
    let off = expire(&[]);
    assert!(!off.status.success());
    let err = String::from_utf8_lossy(&off.stderr);
    assert!(err.contains("retention is off"), "{err}");

    let archive = pipeline_sql::SqlArchive::connect(&db, "pipeline")
        .await
        .unwrap();
    let mut old = pipeline_core::testkit::store::record("t", b"shared original", b"old result");
    old.finished_at_ms = 1_000;
    let mut new = pipeline_core::testkit::store::record("t", b"shared original", b"new result");
    new.finished_at_ms = pipeline_core::envelope::now_ms();
    archive.save(&[old.clone(), new.clone()]).await.unwrap();
    assert_eq!(archive.blob_count().await.unwrap(), 3);

    let on = expire(&["--retention-days", "30"]);
    let out = String::from_utf8_lossy(&on.stdout);
    assert!(
        on.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&on.stderr)
    );
    assert!(out.starts_with("expired 1 jobs"), "{out}");
    assert!(archive.get(old.job_id).await.unwrap().is_none());
    assert!(archive.get(new.job_id).await.unwrap().is_some());
    assert_eq!(archive.original(new.job_id).await.unwrap(), new.original);
    assert_eq!(
        archive.blob_count().await.unwrap(),
        2,
        "the old result went"
    );
}
