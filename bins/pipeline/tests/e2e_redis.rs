//! The pipeline as separate processes over the real Redis: 2 API processes
//! sharing the Redis result store, 2 transformers (one killed with SIGKILL
//! mid-batch), save2db and the activity log, sharing an SQLite archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::procs::{fetch_all, spawn, upload_batch, wait_activity, wait_archived};
use pipeline_core::ImageStore;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_share_results_and_a_killed_transformer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("e2e").replace('-', "_");
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("archive.db").display()
    );
    let redis = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sep = if redis.contains('?') { '&' } else { '?' };
    let env = vec![
        // A dead transformer's entries are claimed after 3 s of silence.
        (
            "PIPELINE_BROKER_URL",
            format!("{redis}{sep}claim_idle_ms=3000&key_ttl_s=900"),
        ),
        ("PIPELINE_RESULTS_URL", redis.clone()),
        ("PIPELINE_DATABASE_URL", db.clone()),
        ("PIPELINE_NAMESPACE", ns.clone()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
        ("PIPELINE_MAX_IN_FLIGHT", "4096".to_string()),
    ];
    let (_api1, line1) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api-1", &env);
    let (_api2, line2) = spawn(env!("CARGO_BIN_EXE_pipeline-api"), "api-2", &env);
    let base1 = line1
        .strip_prefix("pipeline listening on ")
        .expect("api address")
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let base2 = line2
        .strip_prefix("pipeline listening on ")
        .expect("api address")
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
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
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &env);
    let (_activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    // Uploads go to API 1; a transformer is killed half-way.
    let pid = t1.child.id().to_string();
    let ids: Vec<Uuid> = upload_batch(&base1, 400, move || {
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    })
    .await;
    drop(t1);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400);
    // Every result through API 2, which took none of the uploads.
    fetch_all(&base2, &ids).await;

    let archive = wait_archived(&db, &ns, 400, || {}).await;
    for id in &ids {
        assert!(
            archive.get(*id).await.unwrap().is_some(),
            "job {id} not archived"
        );
    }
    wait_activity(&archive, &ids, || {}).await;
    // Stop every process, then delete the namespace's keys (they also
    // expire after 15 minutes should the test fail before this point).
    drop((_api1, _api2, _t2, _save, _activity));
    let broker = pipeline_redis::RedisBroker::connect(&redis, &ns)
        .await
        .unwrap();
    assert!(broker.delete_all().await.unwrap() >= 1);
    let results = pipeline_redis::RedisResultStore::connect(&redis, &ns)
        .await
        .unwrap();
    assert!(results.delete_all().await.unwrap() >= 400);
}
