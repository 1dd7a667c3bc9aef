//! The pipeline as separate processes over RabbitMQ: 1 API, 2
//! transformers, save2db and the activity log, sharing an SQLite archive.
//! One transformer is killed with SIGKILL mid-batch; the broker application
//! is restarted mid-batch. Nothing may be lost or archived twice. The
//! broker is a RabbitMQ node of the test's own: the shared one is never
//! stopped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::procs::{
    fetch_all, http_status, rabbit_env_at, spawn, spawn_api, upload_batch, wait_activity,
    wait_archived,
};
use pipeline_core::testkit::servers::{Kind, Server};

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline_core::ImageStore;

/// Print the namespace's queues (for diagnosing a failure).
fn dump_queues(server: &Server, ns: &str) {
    let out = server.rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ]);
    for line in out.lines().filter(|l| l.contains(ns)) {
        eprintln!("queue: {line}");
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
    let server = Arc::new(Server::start(Kind::RabbitMq, &[]));
    let env = rabbit_env_at(&server.url(), &ns, &db);
    let (api, base) = spawn_api(&env);
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
    let archive = wait_archived(&db, &ns, 500, || dump_queues(&server, &ns)).await;
    for id in &first {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }

    // Batch 2: restart the broker application mid-batch.
    let node = server.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let not_ready_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = not_ready_seen.clone();
    let worker_health = health.clone();
    let second = upload_batch(&base, 300, move || {
        node.rabbitmqctl(&["stop_app"]);
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
        node.rabbitmqctl(&["start_app"]);
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
    let archive = wait_archived(&db, &ns, 800, || dump_queues(&server, &ns)).await;
    for id in &second {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }
    let all: Vec<uuid::Uuid> = first.iter().chain(&second).copied().collect();
    wait_activity(&archive, &all, || dump_queues(&server, &ns)).await;
    let ready = pipeline::cli::http_client_builder()
        .build()
        .unwrap()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the API is ready again after the broker restart"
    );
    drop(api);
    drop(server);
}
