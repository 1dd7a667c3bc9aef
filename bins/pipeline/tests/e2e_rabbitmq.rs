//! The pipeline as separate processes over the real RabbitMQ: 1 API, 2
//! transformers, save2db and the activity log, sharing an SQLite archive.
//! One transformer is killed with SIGKILL mid-batch; the broker application
//! is restarted mid-batch. Nothing may be lost or archived twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::image_bytes;
use image::ImageFormat;
use pipeline_core::ImageStore;
use serde_json::Value;
use uuid::Uuid;

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &str, name: &'static str, env: &[(&str, String)]) -> (Proc, String) {
    let mut cmd = Command::new(bin);
    cmd.env(
        "RUST_LOG",
        std::env::var("PIPELINE_E2E_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert!(
        !line.is_empty(),
        "{name} exited before starting (is RabbitMQ up?)"
    );
    (Proc { child }, line.trim().to_string())
}

/// Restarts the broker application if a test stops it and then fails.
struct BrokerGuard;
impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

/// The status code of `GET path` on `addr` (plain HTTP/1.1, blocking).
fn http_status(addr: &str, path: &str) -> u16 {
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

/// Print the namespace's queues (for diagnosing a failure).
fn dump_queues(ns: &str) {
    if let Ok(out) = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(ns))
        {
            eprintln!("queue: {line}");
        }
    }
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// Upload `n` images with 16 clients; `midway` runs once half of them are accepted.
async fn upload_batch(base: &str, n: usize, midway: impl FnOnce() + Send + 'static) -> Vec<Uuid> {
    let http = reqwest::Client::builder()
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

async fn fetch_all(base: &str, ids: &[Uuid]) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = http
                .get(format!("{base}/v1/images/{id}/result?wait=30"))
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                200 => {
                    let bytes = r.bytes().await.unwrap();
                    let img = image::load_from_memory(&bytes).expect("result decodes");
                    assert_eq!((img.width(), img.height()), (160, 120));
                    break;
                }
                202 => assert!(Instant::now() < deadline, "job {id} not done after 120 s"),
                other => panic!(
                    "job {id}: status {other}: {}",
                    r.text().await.unwrap_or_default()
                ),
            }
        }
    }
}

async fn wait_archived(db: &str, ns: &str, expected: u64) -> pipeline_sql::SqlArchive {
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
        assert!(
            Instant::now() < deadline,
            "only {n} of {expected} jobs archived after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_survive_a_killed_transformer_and_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("e2e").replace('-', "_");
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("archive.db").display()
    );
    let amqp = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let sep = if amqp.contains('?') { '&' } else { '?' };
    let env = vec![
        (
            "PIPELINE_BROKER_URL",
            format!("{amqp}{sep}expires_ms=600000&publish_timeout_ms=60000"),
        ),
        ("PIPELINE_DATABASE_URL", db.clone()),
        ("PIPELINE_NAMESPACE", ns.clone()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
        ("PIPELINE_MAX_IN_FLIGHT", "4096".to_string()),
    ];
    let (api, line) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api", &env);
    let base = line
        .strip_prefix("pipeline listening on ")
        .expect("api address")
        .to_string();
    let (t1, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer-1",
        &env,
    );
    let (_t2, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer-2",
        &env,
    );
    let health = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut save_env = env.clone();
    save_env.push(("PIPELINE_HEALTH_LISTEN", health.clone()));
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &save_env);
    assert_eq!(http_status(&health, "/readyz"), 200, "save2db is ready");
    let (_activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    // Batch 1: SIGKILL a transformer once half the uploads are in.
    let pid = t1.child.id().to_string();
    let first = upload_batch(&base, 500, move || {
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    })
    .await;
    drop(t1);
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 500);
    eprintln!("batch 1: 500 accepted");
    fetch_all(&base, &first).await;
    eprintln!("batch 1: all results fetched");
    let archive = wait_archived(&db, &ns, 500).await;
    for id in &first {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }

    // Batch 2: restart the broker application mid-batch.
    let _guard = BrokerGuard;
    let addr = base.trim_start_matches("http://").to_string();
    let not_ready_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = not_ready_seen.clone();
    let worker_health = health.clone();
    let second = upload_batch(&base, 300, move || {
        rabbitmqctl(&["-q", "stop_app"]);
        // The API notices the lost connection and says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if http_status(&addr, "/readyz") == 503 && http_status(&worker_health, "/readyz") == 503
            {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        rabbitmqctl(&["-q", "start_app"]);
    })
    .await;
    assert!(
        not_ready_seen.load(std::sync::atomic::Ordering::SeqCst),
        "/readyz of the API and of save2db never reported the broker outage"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(&health, "/readyz") != 200 {
        assert!(
            Instant::now() < deadline,
            "save2db not ready 30 s after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("batch 2: 300 accepted");
    fetch_all(&base, &second).await;
    eprintln!("batch 2: all results fetched");
    let archive = wait_archived(&db, &ns, 800).await;
    for id in &second {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }
    // Every job gets its submitted, transformed and archived events (the
    // activity log may lag the archive; a job redelivered after the kill may
    // have been transformed twice).
    use pipeline_core::ActivityLog;
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in first.iter().chain(&second) {
        loop {
            let events: HashSet<String> = archive
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
                dump_queues(&ns);
                panic!("job {id}: activity incomplete after 120 s: {events:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the API is ready again after the broker restart"
    );
    drop(api);
}
