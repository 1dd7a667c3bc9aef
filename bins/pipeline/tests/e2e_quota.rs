//! Quotas through the real binary: a tenant that floods the API is refused
//! with 429 and `Retry-After`, while another tenant's paced uploads all go
//! through, on time; a tenant's jobs in flight are capped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, client, image_bytes};
use image::ImageFormat;

/// Requests per second each tenant may send.
const RATE: u32 = 20;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(4);
/// The quiet tenant's pace: half its rate.
const PACE: Duration = Duration::from_millis(100);

fn key(server: &Server, tenant: &str) -> String {
    common::create_key(server, tenant, "upload,read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_refused_while_another_goes_through() {
    let server = Server::start(&[
        "--auth",
        "keys",
        "--url-secret",
        "0123456789abcdef0123456789abcdef-quota",
        "--tenant-rate",
        &RATE.to_string(),
        "--default-transform",
        "grayscale",
    ]);
    let (noisy, quiet) = (key(&server, "noisy"), key(&server, "quiet"));
    let png = image_bytes(ImageFormat::Png, 16, 16, 5);
    let http = client();
    let post = {
        let (http, url, png) = (http.clone(), server.url("/v1/images"), png.clone());
        move |key: String| {
            http.post(&url)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "image/png")
                .body(png.clone())
                .send()
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let (post, noisy, stop) = (post.clone(), noisy.clone(), stop.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = post(noisy.clone()).await.unwrap();
                match r.status().as_u16() {
                    202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        let after: u32 = r.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!((1..=2).contains(&after), "Retry-After {after}");
                        let body: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("flood got {other}"),
                }
            }
        }));
    }

    // The quiet tenant, paced at half its rate, during the flood.
    let started = Instant::now();
    let mut sent = 0u32;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < FLOOD {
        let at = Instant::now();
        let r = post(quiet.clone()).await.unwrap();
        assert_eq!(
            r.status(),
            202,
            "the quiet tenant was refused: {:?}",
            r.text().await
        );
        slowest = slowest.max(at.elapsed());
        sent += 1;
        let next = started + PACE * sent;
        tokio::time::sleep_until(next.into()).await;
    }
    let quiet_rate = f64::from(sent) / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let (ok, no) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {ok} accepted ({:.1}/s), {no} refused in {seconds:.1} s; quiet tenant: {sent} of {sent} accepted, {quiet_rate:.1}/s, slowest {slowest:?}",
        ok as f64 / seconds
    );
    // The flood gets its rate and burst, no more.
    let allowed = f64::from(RATE) * seconds + f64::from(2 * RATE) + 1.0;
    assert!(
        (ok as f64) <= allowed,
        "{ok} accepted, at most {allowed:.0} allowed"
    );
    assert!(
        no > ok,
        "the flood was hardly refused: {ok} accepted, {no} refused"
    );
    // The quiet tenant kept its pace.
    assert!(quiet_rate > 9.0, "{quiet_rate:.1}/s");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_jobs_in_flight_are_capped() {
    // A slow transform keeps jobs in flight: 2 per tenant at most.
    let server = Server::start(&[
        "--tenant-max-in-flight",
        "2",
        "--concurrency",
        "1",
        "--default-transform",
        "sharpen:10,sharpen:10,sharpen:10,sharpen:10",
    ]);
    let big = image_bytes(ImageFormat::Png, 1500, 1500, 9);
    let http = client();
    let post = |tenant: &'static str| {
        http.post(server.url("/v1/images"))
            .header("x-tenant", tenant)
            .header("content-type", "image/png")
            .body(big.clone())
            .send()
    };
    for _ in 0..2 {
        assert_eq!(post("a").await.unwrap().status(), 202);
    }
    let r = post("a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    // Another tenant is not held back by a's jobs.
    assert_eq!(post("b").await.unwrap().status(), 202);
}
