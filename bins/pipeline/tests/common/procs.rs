//! Running the role binaries as separate processes, for end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::ImageFormat;
use serde_json::Value;
use uuid::Uuid;

use super::image_bytes;

/// Longest a role process may take to print its first line.
pub const START_WITHIN: Duration = Duration::from_secs(60);

pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(bin: &str, name: &'static str, env: &[(&str, String)]) -> (Proc, String) {
    spawn_to(bin, name, env, Stdio::inherit())
}

/// [`spawn`] with the process's standard error (its log) in `stderr`.
pub fn spawn_to(
    bin: &str,
    name: &'static str,
    env: &[(&str, String)],
    stderr: impl Into<Stdio>,
) -> (Proc, String) {
    let mut cmd = Command::new(bin);
    cmd.env(
        "RUST_LOG",
        std::env::var("PIPELINE_E2E_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stdout(Stdio::piped())
    .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let line = pipeline_core::testkit::process::first_line(&mut child, name, START_WITHIN);
    (Proc { child }, line)
}

/// The status code of `GET path` on `addr` (plain HTTP/1.1, blocking).
pub fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut head = [0u8; 12];
    if conn.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Upload `n` images with 16 clients; `midway` runs once half of them are accepted.
pub async fn upload_batch(
    base: &str,
    n: usize,
    midway: impl FnOnce() + Send + 'static,
) -> Vec<Uuid> {
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let midway = Arc::new(std::sync::Mutex::new(Some(midway)));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next, accepted, midway, base) = (
            http.clone(),
            next.clone(),
            accepted.clone(),
            midway.clone(),
            base.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let format = if i % 2 == 0 {
                    ImageFormat::Jpeg
                } else {
                    ImageFormat::Png
                };
                let data = image_bytes(format, 160, 120, (i % 251) as u8);
                let deadline = Instant::now() + Duration::from_secs(120);
                let id = loop {
                    let resp = http
                        .post(format!("{base}/v1/images"))
                        .header("content-type", format.to_mime_type())
                        .body(data.clone())
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 202 => {
                            let body: Value = r.json().await.unwrap();
                            break body["images"][0]["id"]
                                .as_str()
                                .unwrap()
                                .parse::<Uuid>()
                                .unwrap();
                        }
                        // Broker outage or backpressure: the API said retry.
                        Ok(r) if r.status() == 503 => {}
                        Ok(r) => panic!("upload {i}: {}", r.status()),
                        Err(e) => panic!("upload {i}: {e}"),
                    }
                    assert!(Instant::now() < deadline, "upload {i} refused for 120 s");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                let count = {
                    let mut a = accepted.lock().unwrap();
                    a.push(id);
                    a.len()
                };
                if count == n / 2 {
                    let f = midway.lock().unwrap().take();
                    if let Some(f) = f {
                        tokio::task::spawn_blocking(f).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner().unwrap()
}

/// Every result of `ids` from the API at `base`: a 160 x 120 image each.
pub async fn fetch_all(base: &str, ids: &[Uuid]) {
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    for id in ids {
        let bytes = fetch_result(&http, base, &id.to_string(), Duration::from_secs(120)).await;
        let img = image::load_from_memory(&bytes).expect("result decodes");
        assert_eq!((img.width(), img.height()), (160, 120));
    }
}

/// The result bytes of job `id` (through `http`), long-polling until it is done (at most
/// `limit`); any answer but 200 or 202 fails the test.
pub async fn fetch_result(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    limit: Duration,
) -> bytes::Bytes {
    let deadline = Instant::now() + limit;
    loop {
        let r = http
            .get(format!("{base}/v1/images/{id}/result?wait=30"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => return r.bytes().await.unwrap(),
            202 => assert!(
                Instant::now() < deadline,
                "job {id} not done after {limit:?}"
            ),
            other => panic!(
                "job {id}: status {other}: {}",
                r.text().await.unwrap_or_default()
            ),
        }
    }
}

pub async fn wait_archived(
    db: &str,
    ns: &str,
    expected: u64,
    on_fail: impl Fn(),
) -> pipeline_sql::SqlArchive {
    let archive = pipeline_sql::SqlArchive::connect(db, ns).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = archive.image_count().await.unwrap();
        assert!(
            n <= expected,
            "{n} rows for {expected} jobs: something was archived twice"
        );
        if n == expected {
            return archive;
        }
        if Instant::now() >= deadline {
            on_fail();
            panic!("only {n} of {expected} jobs archived after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The environment of role processes on the real RabbitMQ
/// (`PIPELINE_TEST_AMQP_URL`), with queues that expire 10 minutes after
/// the test, archiving to `db` in namespace `ns`.
pub fn rabbit_env(ns: &str, db: &str) -> Vec<(&'static str, String)> {
    let amqp = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    rabbit_env_at(&amqp, ns, db)
}

/// [`rabbit_env`] on the RabbitMQ server at `amqp`.
pub fn rabbit_env_at(amqp: &str, ns: &str, db: &str) -> Vec<(&'static str, String)> {
    let sep = if amqp.contains('?') { '&' } else { '?' };
    vec![
        (
            "PIPELINE_BROKER_URL",
            format!("{amqp}{sep}expires_ms=600000&publish_timeout_ms=60000"),
        ),
        ("PIPELINE_DATABASE_URL", db.to_string()),
        ("PIPELINE_NAMESPACE", ns.to_string()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
        ("PIPELINE_MAX_IN_FLIGHT", "4096".to_string()),
    ]
}

/// Start an API process; its base URL.
pub fn spawn_api(env: &[(&str, String)]) -> (Proc, String) {
    let (api, line) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api", env);
    (api, api_base(&line))
}

/// The base URL in an API's first line (`pipeline listening on URL (auth...)`).
pub fn api_base(line: &str) -> String {
    line.strip_prefix("pipeline listening on ")
        .expect("api address")
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Wait until every job of `ids` has its submitted, transformed and
/// archived events in the activity log (which may lag the archive; a job
/// redelivered after a crash may have been transformed twice). `on_fail`
/// runs before the test fails (to dump diagnostics).
pub async fn wait_activity(archive: &pipeline_sql::SqlArchive, ids: &[Uuid], on_fail: impl Fn()) {
    use pipeline_core::ActivityLog;
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in ids {
        loop {
            let events: std::collections::HashSet<String> = archive
                .for_job(*id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event)
                .collect();
            if ["image.submitted", "image.transformed", "image.archived"]
                .iter()
                .all(|e| events.contains(*e))
            {
                break;
            }
            if Instant::now() >= deadline {
                on_fail();
                panic!("job {id}: activity incomplete after 120 s: {events:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
