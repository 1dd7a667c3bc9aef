//! The admin API and `pipeline admin` commands against the real RabbitMQ
//! and Redis, with the role binaries: jobs whose transform was
//! dead-lettered are listed with their reason, one is replayed through
//! each interface and completes, and the rest are purged.
//!
//! The test itself stands in for a transformer that cannot handle the
//! jobs (it dead-letters them), so the cause and reason are known.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::procs::{fetch_result, spawn, spawn_api};
use futures::StreamExt;
use pipeline_core::broker::Subscription;
use pipeline_core::services::queues;
use serde_json::Value;
use uuid::Uuid;

const REASON: &str = "the test's transformer cannot handle this job";

fn admin(env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    // Bounded: a hung command fails the test.
    let mut cmd = Command::new("timeout");
    cmd.args(["60", env!("CARGO_BIN_EXE_pipeline"), "admin"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pipeline admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn admin_json(env: &[(&str, String)], args: &[&str]) -> Value {
    let (ok, out, err) = admin(env, &[args, &["--json"]].concat());
    assert!(ok, "pipeline admin {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The `transform` row of a queue overview.
fn transform_row(overview: &Value) -> Value {
    overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "transform")
        .cloned()
        .unwrap()
}

async fn upload(http: &reqwest::Client, base: &str, seed: u8) -> Uuid {
    let png = common::image_bytes(image::ImageFormat::Png, 64, 48, seed);
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(png)
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("transform", "resize:32x24");
    let r = http
        .post(format!("{base}/v1/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let body: Value = r.json().await.unwrap();
    body["images"][0]["id"].as_str().unwrap().parse().unwrap()
}

async fn dead_letters_are_inspected_replayed_and_purged(env: Vec<(&'static str, String)>) {
    let http = common::client();
    let (_api, base) = spawn_api(&env);
    let mut ids = Vec::new();
    for seed in 0..3 {
        ids.push(upload(&http, &base, seed).await);
    }

    // The transform of every job fails for good: dead letters.
    let url = env
        .iter()
        .find(|(k, _)| *k == "PIPELINE_BROKER_URL")
        .unwrap();
    let ns = env
        .iter()
        .find(|(k, _)| *k == "PIPELINE_NAMESPACE")
        .unwrap();
    let options = pipeline_core::connect::ConnectOptions::new(ns.1.clone());
    let broker = pipeline::backends::compiled()
        .connect_broker(&url.1, &options)
        .await
        .unwrap();
    let mut transform = broker
        .subscribe(Subscription::new(queues::TRANSFORM, 1))
        .await
        .unwrap();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(20), transform.next())
            .await
            .expect("a submitted job")
            .unwrap()
            .unwrap();
        assert!(ids.contains(&d.envelope().job_id));
        d.dead_letter(REASON).await.unwrap();
    }
    drop(transform);

    // The overview, from the shell and from the API.
    let row = transform_row(&admin_json(&env, &["queues"]));
    assert_eq!(
        (&row["messages"], &row["dead_letters"]),
        (&0.into(), &3.into()),
        "{row}"
    );
    let (ok, text, err) = admin(&env, &["queues"]);
    assert!(ok, "{err}");
    let words: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("transform "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(words.len(), 4, "{text}");
    assert_eq!((words[1], words[3]), ("0", "3"), "{text}");
    let r = http
        .get(format!("{base}/v1/admin/queues"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let row = transform_row(&r.json().await.unwrap());
    assert_eq!(row["dead_letters"], 3, "{row}");
    // The same counts on /metrics, read from the broker at the scrape.
    let text = http.get(format!("{base}/metrics")).send().await.unwrap();
    let text = text.text().await.unwrap();
    for line in [
        r#"pipeline_queue_dead_letters{queue="transform"} 3"#,
        r#"pipeline_queue_messages{queue="transform"} 0"#,
        r#"pipeline_queue_dead_letters{queue="save2db"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // Peek: the reason, the cause, the jobs; nothing moves.
    for _ in 0..2 {
        let dead = admin_json(&env, &["dead", "transform"]);
        let list = dead["dead_letters"].as_array().unwrap();
        let mut jobs: Vec<Uuid> = list
            .iter()
            .map(|d| d["job_id"].as_str().unwrap().parse().unwrap())
            .collect();
        jobs.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(jobs, want);
        for d in list {
            assert_eq!(d["reason"], REASON, "{d}");
            assert_eq!(d["cause"], "rejected");
            assert_eq!(d["event"], "image.submitted");
            assert_eq!(d["attempts"], 1);
            assert_eq!(d["parts"][0]["name"], "original");
        }
    }
    let (ok, text, err) = admin(&env, &["dead", "transform", "--limit", "2"]);
    assert!(ok, "{err}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(REASON) && text.contains("cause rejected"),
        "{text}"
    );
    let r = http
        .get(format!("{base}/v1/admin/queues/transform/dead?limit=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["dead_letters"].as_array().unwrap().len(), 3, "{body}");

    // A transformer that works, then one job replayed from the shell and
    // one through the API: both complete.
    let (_transformer, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer",
        &env,
    );
    let (ok, text, err) = admin(&env, &["replay", "transform", "--job", &ids[0].to_string()]);
    assert!(ok, "{err}");
    assert_eq!(text.trim(), "transform.dead: 1 replayed, 0 kept");
    let r = http
        .post(format!(
            "{base}/v1/admin/queues/transform/dead/replay?job_id={}",
            ids[1]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (&body["replayed"], &body["kept"]),
        (&1.into(), &0.into()),
        "{body}"
    );
    for id in &ids[..2] {
        let bytes = fetch_result(&http, &base, &id.to_string(), Duration::from_secs(60)).await;
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (32, 24));
    }
    let left = admin_json(&env, &["dead", "transform"]);
    let left = left["dead_letters"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["job_id"], ids[2].to_string());

    // Purge: refused without --yes, then the queue is empty.
    let (ok, _, err) = admin(&env, &["purge", "transform"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, text, err) = admin(&env, &["purge", "transform", "--yes"]);
    assert!(ok, "{err}");
    assert_eq!(text.trim(), "transform.dead: 1 purged");
    let row = transform_row(&admin_json(&env, &["queues"]));
    assert_eq!(row["dead_letters"], 0, "{row}");
    let r = http
        .delete(format!("{base}/v1/admin/queues/transform/dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["purged"], 0);

    // Unknown queues are refused, naming the pipeline's.
    let (ok, _, err) = admin(&env, &["dead", "nope"]);
    assert!(
        !ok && err.contains("transform, api.results, save2db, activity"),
        "{err}"
    );
    let (status, code) = common::error_code(
        http.get(format!("{base}/v1/admin/queues/nope/dead"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "unknown_queue"));
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("admin").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    dead_letters_are_inspected_replayed_and_purged(common::procs::rabbit_env(&ns, &db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("admin").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let redis = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sep = if redis.contains('?') { '&' } else { '?' };
    let env = vec![
        ("PIPELINE_BROKER_URL", format!("{redis}{sep}key_ttl_s=900")),
        ("PIPELINE_DATABASE_URL", db),
        ("PIPELINE_NAMESPACE", ns),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
    ];
    dead_letters_are_inspected_replayed_and_purged(env).await;
}
