//! Failover: a transformer killed with SIGKILL while it holds jobs; every
//! job it held completes within 5 s of the kill, on Redis (by liveness, not
//! by idle time) and on RabbitMQ (which hands back a dead connection's
//! deliveries at once).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::image_bytes;
use common::procs::{fetch_all, fetch_result, rabbit_env, spawn, upload_batch};
use fred::prelude::{ClientLike, StreamsInterface};
use uuid::Uuid;

/// One test at a time: each times its jobs on the machine's 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The jobs the consumer of process `pid` holds in `stream`.
async fn held_by(redis: &fred::clients::Client, stream: &str, pid: u32) -> Vec<Uuid> {
    let summary: fred::types::Value = redis.xpending(stream, "pipeline", ()).await.unwrap();
    let prefix = format!("c-{pid}-");
    let consumer = summary
        .into_array()
        .into_iter()
        .nth(3)
        .map(|c| c.into_array())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pair| pair.into_array().into_iter().next()?.into_string())
        .find(|name| name.starts_with(&prefix));
    let Some(consumer) = consumer else {
        return Vec::new();
    };
    let pending: Vec<(String, String, u64, u64)> = redis
        .xpending(stream, "pipeline", ("-", "+", 100, consumer.as_str()))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for (id, ..) in pending {
        let entries: Vec<(String, HashMap<String, Bytes>)> =
            redis.xrange_values(stream, &id, &id, None).await.unwrap();
        for (_, mut fields) in entries {
            let frame = fields.remove("f").expect("frame field");
            jobs.push(pipeline_core::wire::decode(frame).unwrap().job_id);
        }
    }
    jobs
}

/// Those of `ids` whose status is still `pending`.
async fn pending<T: std::fmt::Display + Clone>(
    http: &reqwest::Client,
    base: &str,
    ids: &[T],
) -> Vec<T> {
    let mut out = Vec::new();
    for id in ids {
        let status: serde_json::Value = http
            .get(format!("{base}/v1/images/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "pending" {
            out.push(id.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_transformers_jobs_move_on_within_five_seconds() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("fo").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let redis_url = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sep = if redis_url.contains('?') { '&' } else { '?' };
    // Idle-time claims only after 10 minutes: only liveness can move the
    // dead transformer's jobs within the test.
    let env = vec![
        (
            "PIPELINE_BROKER_URL",
            format!("{redis_url}{sep}claim_idle_ms=600000&key_ttl_s=900"),
        ),
        ("PIPELINE_DATABASE_URL", db.clone()),
        ("PIPELINE_NAMESPACE", ns.clone()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
        ("PIPELINE_MAX_IN_FLIGHT", "4096".to_string()),
    ];
    let (_api, line) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api", &env);
    let base = line
        .strip_prefix("pipeline listening on ")
        .unwrap()
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &env);
    let (_activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    // A backlog first, then the transformers: both are sure to hold jobs.
    let ids = upload_batch(&base, 200, || {}).await;
    let (mut t1, _) = spawn(env!("CARGO_BIN_EXE_pipeline-transformer"), "t1", &env);
    let (_t2, _) = spawn(env!("CARGO_BIN_EXE_pipeline-transformer"), "t2", &env);
    let config = fred::types::config::Config::from_url(&redis_url).unwrap();
    let redis = fred::clients::Client::new(config, None, None, None);
    redis.init().await.unwrap();
    let stream = format!("{{{ns}.transform}}");
    let pid = t1.child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held_by(&redis, &stream, pid).await.is_empty() {
        assert!(Instant::now() < deadline, "t1 never took a job");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Both transformers are busy with the backlog: freeze t1 (SIGSTOP, so
    // what it holds cannot change while it is read), then kill it. Times
    // count from the freeze, when it stopped working and heartbeating.
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // A job it finished but had not acked yet is done already: only the
    // unfinished ones measure the takeover. Frozen between two jobs, it
    // is let go on and frozen again (bounded).
    let mut tries = 0;
    let (killed, held, unfinished) = loop {
        signal("-STOP");
        let frozen = Instant::now();
        let held = held_by(&redis, &stream, pid).await;
        let unfinished = pending(&http, &base, &held).await;
        tries += 1;
        if !unfinished.is_empty() || tries == 50 {
            break (frozen, held, unfinished);
        }
        signal("-CONT");
        tokio::time::sleep(Duration::from_millis(3)).await;
    };
    signal("-KILL");
    let _ = t1.child.wait();
    assert!(
        !unfinished.is_empty(),
        "the transformer held no unfinished job in {tries} freezes ({} finished, unacked)",
        held.len()
    );

    let mut slowest = Duration::ZERO;
    for id in &unfinished {
        fetch_result(&http, &base, &id.to_string(), Duration::from_secs(60)).await;
        slowest = slowest.max(killed.elapsed());
    }
    println!(
        "{} jobs held by the killed transformer ({} unfinished); the last completed {slowest:?} after the kill",
        held.len(),
        unfinished.len()
    );
    assert!(slowest < Duration::from_secs(5), "took {slowest:?}");
    fetch_all(&base, &ids).await;
    println!(
        "all {} jobs done {:?} after the kill",
        ids.len(),
        killed.elapsed()
    );

    drop((_api, _t2, _save, _activity));
    let broker = pipeline_redis::RedisBroker::connect(&redis_url, &ns)
        .await
        .unwrap();
    broker.delete_all().await.unwrap();
}

/// RabbitMQ does not say which deliveries a connection held, so every job
/// in flight at the kill is timed: a bound on the ones the dead process held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_every_job_in_flight_at_the_kill_completes_within_five_seconds() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("fo").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let env = rabbit_env(&ns, &db);
    let (_api, line) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api", &env);
    let base = line
        .strip_prefix("pipeline listening on ")
        .unwrap()
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let (mut t1, _) = spawn(env!("CARGO_BIN_EXE_pipeline-transformer"), "t1", &env);
    let (_t2, _) = spawn(env!("CARGO_BIN_EXE_pipeline-transformer"), "t2", &env);
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &env);
    let (_activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    // Large images, so each transformer (one job at a time, two held)
    // is still busy when the uploads are all in. Six, sent at once: all in
    // flight at the kill, and few enough that the transformer left drains
    // them within the bound (ten took it 5.5 s in a debug build).
    const UPLOADS: u8 = 6;
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Made first, then sent together: made one by one inside the uploads'
    // task, an image (seconds of a debug build's CPU) held up the uploads
    // already connected, past the server's 10 s header timeout.
    let bodies: Vec<Vec<u8>> = (0..UPLOADS)
        .map(|seed| image_bytes(image::ImageFormat::Jpeg, 2400, 1800, seed))
        .collect();
    let uploads = bodies.into_iter().map(|body| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let answer: serde_json::Value = http
                .post(format!("{base}/v1/images"))
                .header("content-type", "image/jpeg")
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["images"][0]["id"].as_str().unwrap().to_string()
        }
    });
    let ids = futures::future::join_all(uploads).await;
    let status = Command::new("kill")
        .args(["-9", &t1.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();
    let _ = t1.child.wait();
    // Which jobs were still unfinished at the kill (the two the dead
    // transformer held among them, unless it had finished them).
    let unfinished = pending(&http, &base, &ids).await;
    assert!(
        unfinished.len() >= 3,
        "only {} jobs in flight at the kill",
        unfinished.len()
    );
    let mut slowest = Duration::ZERO;
    for id in &unfinished {
        fetch_result(&http, &base, id, Duration::from_secs(60)).await;
        slowest = slowest.max(killed.elapsed());
    }
    println!(
        "{} jobs unfinished at the kill; the last completed {slowest:?} after it",
        unfinished.len()
    );
    assert!(slowest < Duration::from_secs(5), "took {slowest:?}");
}
