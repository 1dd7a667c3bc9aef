//! The cost of one upload is bounded: the worst spec the API accepts (32
//! unsharp masks at the largest sigma) on the largest image it accepts (40
//! megapixels) ends `failed` with `timeout` at the job's time limit, under
//! a stated memory bound, and a spec that would make an image over the
//! pixel limit is refused at upload with the limit named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, error_code};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// The job time limit the server runs with here.
const JOB_TIMEOUT_S: u64 = 10;
/// Peak resident memory the server may reach with this job: measured at
/// 1.5 GB (one 40-megapixel job: the decoded image, the unsharp mask's
/// float planes and its output), plus headroom.
const RSS_BOUND_KB: u64 = 2_500_000;

/// 6324 x 6324 (39.99 megapixels, under the default 40) of mostly flat
/// colour: a small PNG that decodes to the largest image allowed.
fn largest_png() -> Vec<u8> {
    let side = 6324;
    let img = RgbImage::from_fn(side, side, |x, y| {
        if y % 512 == 0 {
            Rgb([(x % 256) as u8, 0, 0])
        } else {
            Rgb([128, 128, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Upload `png` with `spec` and wait (up to 60 s) for its result.
async fn transform(
    client: &reqwest::Client,
    server: &Server,
    spec: &str,
    png: &[u8],
) -> reqwest::Response {
    let resp = client
        .post(server.url(&format!("/v1/images?transform={spec}")))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{spec}");
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["images"][0]["id"].as_str().unwrap().to_string();
    client
        .get(server.url(&format!("/v1/images/{id}/result?wait=60")))
        .send()
        .await
        .unwrap()
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_allowed_job_ends_at_its_deadline_within_a_memory_bound() {
    let timeout = JOB_TIMEOUT_S.to_string();
    let server = Server::start(&["--job-timeout", &timeout]);
    let client = client();
    let png = largest_png();
    let worst = vec!["sharpen:10"; pipeline_core::transform::MAX_OPERATIONS].join(",");

    let started = Instant::now();
    let resp = transform(&client, &server, &worst, &png).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["reason"], "timeout", "{body}");
    let rss = peak_rss_kb(server.child.id());
    eprintln!(
        "worst job ({} bytes of PNG, 40 Mpx, {worst:.40}... x{}): failed with timeout after {:.2} s (limit {JOB_TIMEOUT_S} s); {}; server peak RSS {} MB",
        png.len(),
        pipeline_core::transform::MAX_OPERATIONS,
        elapsed.as_secs_f64(),
        body["error"]["message"],
        rss / 1000
    );
    // The limit is checked between operations: at most one operation runs
    // past it.
    assert!(
        elapsed < Duration::from_secs(JOB_TIMEOUT_S + 20),
        "took {elapsed:?}"
    );
    assert!(rss < RSS_BOUND_KB, "peak RSS {rss} kB");

    // The same image with a spec that fits finishes in time.
    let resp = transform(&client, &server, "thumbnail:256", &png).await;
    assert_eq!(resp.status(), 200);
    let thumb = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 256));

    // A 100-byte upload asking for a 268-megapixel image: refused at once.
    let tiny = common::image_bytes(ImageFormat::Png, 1, 1, 0);
    let resp = client
        .post(server.url("/v1/images?transform=resize:16384x16384:exact"))
        .header("content-type", "image/png")
        .body(tiny)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (422, "too_many_pixels".to_string()));
}
