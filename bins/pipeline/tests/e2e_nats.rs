//! The pipeline as separate processes over NATS only: broker, result store
//! and blob store on JetStream (every upload goes by reference through the
//! object store), the archive in SQLite. Two APIs sharing the result store,
//! two transformers, save2db and the activity log; half-way through 500
//! uploads to the first API a transformer is SIGKILLed and the NATS server
//! is restarted. Every result must come back correct through the second
//! API, which took none of the uploads, and every job be archived exactly
//! once. The NATS server is the
//! test's own (file storage in a temporary directory), never the
//! machine's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::procs::{fetch_all, spawn, spawn_api, upload_batch, wait_activity, wait_archived};
use pipeline_core::ImageStore;
use pipeline_core::testkit::servers::{Kind, Server};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_only_survives_a_killed_transformer_and_a_server_restart() {
    let server = Arc::new(Mutex::new(Server::start(Kind::Nats, &[])));
    let nats = server.lock().unwrap().url();
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("e2e");
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("archive.db").display()
    );
    let env = vec![
        ("PIPELINE_BROKER_URL", nats.clone()),
        ("PIPELINE_RESULTS_URL", nats.clone()),
        ("PIPELINE_BLOB_URL", nats.clone()),
        // Every image travels by reference, through the object store.
        ("PIPELINE_INLINE_MAX", "1024".to_string()),
        ("PIPELINE_DATABASE_URL", db.clone()),
        ("PIPELINE_NAMESPACE", ns.clone()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
        ("PIPELINE_MAX_IN_FLIGHT", "4096".to_string()),
    ];
    let (api, base) = spawn_api(&env);
    let (api2, base2) = spawn_api(&env);
    let (t1, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer-1",
        &env,
    );
    let (t2, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer-2",
        &env,
    );
    let (save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &env);
    let (activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    let started = Instant::now();
    let pid = t1.child.id().to_string();
    let restarted = server.clone();
    let ids: Vec<Uuid> = upload_batch(&base, 500, move || {
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let mut s = restarted.lock().unwrap();
        s.stop();
        s.resume();
    })
    .await;
    drop(t1);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);
    // Every result through the other API: the key-value store is shared.
    fetch_all(&base2, &ids).await;
    let archive = wait_archived(&db, &ns, 500, || {}).await;
    for id in &ids {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }
    wait_activity(&archive, &ids, || {}).await;
    println!(
        "500 jobs over NATS (broker, results, blobs; 2 APIs), a transformer killed and the server restarted half-way: all done and archived once in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop((api, api2, t2, save, activity));
}
