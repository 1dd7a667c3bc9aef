//! Slow clients cannot hold the API: 200 connections that send their
//! headers a byte a second are closed by the header timeout, a body that
//! trickles in gets 408 at the body timeout, and meanwhile an ordinary
//! client uploads and gets its result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, image_bytes};
use image::ImageFormat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW: usize = 200;
const HEADER_TIMEOUT_S: u64 = 2;
const BODY_TIMEOUT_S: u64 = 3;

/// Send `bytes` a byte a second until the server closes the connection;
/// how long that took (`None`: still open after `within`).
async fn trickle(addr: String, bytes: Vec<u8>, within: Duration) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    let mut sent = 0;
    while started.elapsed() < within {
        if sent < bytes.len() && stream.write_all(&bytes[sent..=sent]).await.is_err() {
            return (Some(started.elapsed()), answer);
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(started.elapsed()), answer),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (None, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let server = Server::start(&[
        "--header-timeout",
        &HEADER_TIMEOUT_S.to_string(),
        "--body-timeout",
        &BODY_TIMEOUT_S.to_string(),
    ]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let within = Duration::from_secs(30);
    let headers = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n".to_vec();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(tokio::spawn(trickle(addr.clone(), headers.clone(), within)));
    }
    // Headers complete, then a body that never finishes arriving.
    let body = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n";
    let slow_body = tokio::spawn(async move {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(body).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        while started.elapsed() < within {
            if stream.write_all(b"x").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });

    // An ordinary client, while the slow ones hold their connections.
    let http = client();
    let t0 = Instant::now();
    let resp = http
        .post(server.url("/v1/images?transform=grayscale"))
        .header("content-type", "image/png")
        .body(image_bytes(ImageFormat::Png, 64, 48, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["images"][0]["id"].as_str().unwrap().to_string();
    let result = http
        .get(server.url(&format!("/v1/images/{id}/result?wait=30")))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let served_in = t0.elapsed();

    let mut closed = Vec::new();
    for task in slow {
        let (after, answer) = task.await.unwrap();
        let after =
            after.unwrap_or_else(|| panic!("a slow connection was still open after {within:?}"));
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        closed.push(after);
    }
    closed.sort();
    let (body_after, body_answer) = slow_body.await.unwrap();
    eprintln!(
        "an upload and its result took {:.2} s beside {SLOW} slow connections; they were closed after {:.1}-{:.1} s (header timeout {HEADER_TIMEOUT_S} s); a trickled body got {:?} after {:.1} s (body timeout {BODY_TIMEOUT_S} s)",
        served_in.as_secs_f64(),
        closed[0].as_secs_f64(),
        closed[closed.len() - 1].as_secs_f64(),
        body_answer.lines().next().unwrap_or_default(),
        body_after.as_secs_f64(),
    );
    assert!(
        served_in < Duration::from_secs(10),
        "served in {served_in:?}"
    );
    assert!(
        closed[closed.len() - 1] < Duration::from_secs(HEADER_TIMEOUT_S + 4),
        "slowest close {:?}",
        closed[closed.len() - 1]
    );
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(body_after < Duration::from_secs(BODY_TIMEOUT_S + 4));
}
