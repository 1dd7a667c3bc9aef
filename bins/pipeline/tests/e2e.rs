//! End to end: the real binary, real HTTP, the SQLite archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, client, error_code, image_bytes, mime};
use futures::StreamExt;
use image::{GenericImageView, ImageFormat};
use pipeline_core::{ActivityLog, ImageStore, JobState};
use serde_json::Value;
use uuid::Uuid;

struct Sent {
    id: Uuid,
    format: ImageFormat,
    width: u32,
    height: u32,
    original: Vec<u8>,
}

/// Count pixels of the top-left 160x16 band that differ between two images.
fn changed_top_left(a: &[u8], b: &[u8]) -> usize {
    let a = image::load_from_memory(a)
        .expect("decode original")
        .to_rgb8();
    let b = image::load_from_memory(b).expect("decode result").to_rgb8();
    let mut n = 0;
    for y in 0..16.min(a.height()) {
        for x in 0..160.min(a.width()) {
            let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
            if (0..3).any(|c| (i32::from(p[c]) - i32::from(q[c])).abs() > 60) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_images_through_the_whole_pipeline() {
    let mut server = Server::start(&[]);
    let http = client();
    let formats = [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ];
    let mut sent: Vec<Sent> = Vec::new();

    // 60 through /v1/images: raw bodies and multipart with several files.
    for i in 0..30u32 {
        let format = formats[i as usize % formats.len()];
        let (w, h) = (200 + i * 7, 120 + i * 3);
        let data = image_bytes(format, w, h, i as u8);
        let resp = http
            .post(format!("{}/v1/images", server.base))
            .header("content-type", mime(format))
            .body(data.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.expect("json");
        let id = body["images"][0]["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        assert_eq!(body["images"][0]["width"], w);
        sent.push(Sent {
            id,
            format,
            width: w,
            height: h,
            original: data,
        });
    }
    for i in 0..10u32 {
        let mut form = reqwest::multipart::Form::new();
        let mut batch = Vec::new();
        for j in 0..3u32 {
            let format = formats[(i + j) as usize % formats.len()];
            let (w, h) = (180 + j * 11, 100 + i);
            let data = image_bytes(format, w, h, (i * 3 + j) as u8);
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(data.clone())
                    .file_name(format!("f{i}-{j}"))
                    .mime_str(mime(format))
                    .expect("mime"),
            );
            batch.push((format, w, h, data));
        }
        let resp = http
            .post(server.url("/v1/images"))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.expect("json");
        let images = body["images"].as_array().expect("images");
        assert_eq!(images.len(), 3);
        for (img, (format, w, h, data)) in images.iter().zip(batch) {
            let id = img["id"].as_str().expect("id").parse().expect("uuid");
            sent.push(Sent {
                id,
                format,
                width: w,
                height: h,
                original: data,
            });
        }
    }
    // 50 through the prototype's POST /image.
    for i in 0..50u32 {
        let format = formats[i as usize % formats.len()];
        let (w, h) = (240, 100 + i);
        let data = image_bytes(format, w, h, 100 + i as u8);
        let form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(data.clone())
                .file_name("x")
                .mime_str(mime(format))
                .expect("mime"),
        );
        let resp = http
            .post(server.url("/image"))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        let id = body["id"].as_str().expect("id").parse().expect("uuid");
        sent.push(Sent {
            id,
            format,
            width: w,
            height: h,
            original: data,
        });
    }
    assert!(sent.len() >= 100);

    // Every result: same format and size, stamped at the top-left. Half are
    // fetched through the prototype route (204 until ready).
    for (n, s) in sent.iter().enumerate() {
        let bytes = if n % 2 == 0 {
            let resp = http
                .get(server.url(&format!("/v1/images/{}/result?wait=30", s.id)))
                .send()
                .await
                .expect("get");
            assert_eq!(resp.status(), 200, "job {}", s.id);
            assert_eq!(resp.headers()["content-type"], mime(s.format));
            resp.bytes().await.expect("bytes").to_vec()
        } else {
            // Wait for completion through the status document, then use /image/{id}.
            http.get(server.url(&format!("/v1/images/{}/result?wait=30", s.id)))
                .send()
                .await
                .expect("wait");
            let resp = http
                .get(server.url(&format!("/image/{}", s.id)))
                .send()
                .await
                .expect("get");
            assert_eq!(resp.status(), 200, "job {}", s.id);
            assert_eq!(resp.headers()["content-type"], mime(s.format));
            resp.bytes().await.expect("bytes").to_vec()
        };
        assert_eq!(
            image::guess_format(&bytes).expect("format"),
            s.format,
            "job {}",
            s.id
        );
        let result = image::load_from_memory(&bytes).expect("decode");
        assert_eq!(result.dimensions(), (s.width, s.height));
        let changed = changed_top_left(&s.original, &bytes);
        assert!(
            changed > 80,
            "job {} ({:?}): only {changed} pixels of the top-left changed",
            s.id,
            s.format
        );
    }

    // A job that passes validation but fails in the transformer.
    let small = image_bytes(ImageFormat::Png, 50, 50, 1);
    let resp = http
        .post(server.url("/v1/images?transform=crop:500x500%2B0%2B0"))
        .header("content-type", "image/png")
        .body(small)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 202);
    let failed_id: Uuid = resp.json::<Value>().await.expect("json")["images"][0]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let resp = http
        .get(server.url(&format!("/v1/images/{failed_id}/result?wait=30")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["reason"], "transform_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("outside"),
        "{body}"
    );
    let status: Value = http
        .get(server.url(&format!("/v1/images/{failed_id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(status["status"], "failed");
    assert_eq!(
        http.get(server.url(&format!("/image/{failed_id}")))
            .send()
            .await
            .expect("get")
            .status(),
        422
    );

    // Graceful stop drains save2db and the activity log.
    server.stop();
    let archive = pipeline_sql::SqlArchive::connect(&server.database_url(), "pipeline")
        .await
        .expect("open archive");
    assert_eq!(
        archive.image_count().await.expect("count"),
        sent.len() as u64 + 1
    );
    let mut events_total = 0;
    for s in &sent {
        let rec = archive.get(s.id).await.expect("get").expect("archived");
        assert_eq!(rec.state, JobState::Done);
        assert_eq!(
            archive
                .original(s.id)
                .await
                .expect("original")
                .expect("bytes")
                .data,
            s.original
        );
        let result = archive.result(s.id).await.expect("result").expect("bytes");
        assert_eq!(image::guess_format(&result.data).expect("format"), s.format);
        let events: Vec<String> = archive
            .for_job(s.id)
            .await
            .expect("activity")
            .into_iter()
            .map(|e| e.event)
            .collect();
        let mut sorted = events.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["image.archived", "image.submitted", "image.transformed"],
            "job {}",
            s.id
        );
        events_total += events.len();
    }
    let rec = archive
        .get(failed_id)
        .await
        .expect("get")
        .expect("failed job archived");
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.error.expect("error").code, "transform_failed");
    let failed_events: Vec<String> = archive
        .for_job(failed_id)
        .await
        .expect("activity")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(failed_events.len(), 2, "{failed_events:?}");
    events_total += failed_events.len();
    assert_eq!(
        archive.activity_count().await.expect("count"),
        events_total as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_limit_answers_503_with_retry_after() {
    let server = Server::start(&["--max-in-flight", "2", "--concurrency", "1"]);
    let http = client();
    // Slow enough that the first two jobs are still running while we upload.
    let slow = ["sharpen:10"; 8].join(",");
    let data = image_bytes(ImageFormat::Png, 2000, 1500, 5);
    let mut statuses = HashMap::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let resp = http
            .post(server.url(&format!(
                "/v1/images?transform={}",
                slow.replace(':', "%3A").replace(',', "%2C")
            )))
            .header("content-type", "image/png")
            .body(data.clone())
            .send()
            .await
            .expect("upload");
        if resp.status() == 503 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let (_, code) = error_code(resp).await;
            assert_eq!(code, "unavailable");
            *statuses.entry(503).or_insert(0) += 1;
        } else {
            *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
        }
    }
    assert_eq!(statuses.get(&202), Some(&2), "{statuses:?}");
    assert_eq!(statuses.get(&503), Some(&3), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_stream_announces_completions() {
    let server = Server::start(&[]);
    let http = client();
    let events = http
        .get(server.url("/v1/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let mut stream = events.bytes_stream();
    let resp = http
        .post(server.url("/v1/images"))
        .header("content-type", "image/jpeg")
        .body(image_bytes(ImageFormat::Jpeg, 100, 80, 2))
        .send()
        .await
        .expect("upload");
    let id = resp.json::<Value>().await.expect("json")["images"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if text.contains(&id) && text.contains("event: done") {
                return true;
            }
        }
        false
    })
    .await
    .expect("no event within 30 s");
    assert!(found, "stream ended: {text}");
}
